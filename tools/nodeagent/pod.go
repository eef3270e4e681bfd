// One running pod: its network namespace, its directory, and the state of
// each container. All fields behind mu; status.go turns them into a PodStatus.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

type podRT struct {
	p   *provider
	key string
	dir string

	ctx    context.Context // cancelled when the pod is being stopped
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	exited chan struct{} // closed when terminate has finished

	mu          sync.Mutex
	pod         *v1.Pod
	updated     chan struct{} // closed (and replaced) by UpdatePod: a new image is worth a look at once
	net         *podNet
	startTime   metav1.Time
	initDone    bool
	failReason  string // pod-level failure (e.g. no command): phase Failed
	failMessage string
	deleting    bool
	stopped     bool // processes gone and network removed
	inits, ctrs []*ctrState
	conds       map[v1.PodConditionType]v1.PodCondition
}

func newPodRT(p *provider, pod *v1.Pod) *podRT {
	ctx, cancel := context.WithCancel(context.Background())
	pr := &podRT{p: p, key: podKey(pod.Namespace, pod.Name), pod: pod.DeepCopy(),
		ctx: ctx, cancel: cancel, updated: make(chan struct{}), exited: make(chan struct{}),
		startTime: metav1.Now(), conds: map[v1.PodConditionType]v1.PodCondition{}}
	pr.dir = filepath.Join(p.cfg.stateDir, "pods", fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID))
	for _, c := range pod.Spec.InitContainers {
		pr.inits = append(pr.inits, newCtrState(pr, c, true))
	}
	for _, c := range pod.Spec.Containers {
		pr.ctrs = append(pr.ctrs, newCtrState(pr, c, false))
	}
	return pr
}

func (pr *podRT) uid() types.UID {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pod.UID
}

func (pr *podRT) spec() v1.PodSpec {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pod.Spec
}

func (pr *podRT) logf(format string, args ...any) {
	logrus.WithField("pod", pr.key).Infof(format, args...)
}

func (pr *podRT) update(pod *v1.Pod) {
	pr.mu.Lock()
	uid := pr.pod.UID
	if pod.UID == uid {
		pr.pod.Labels, pr.pod.Annotations = pod.Labels, pod.Annotations
		for i := range pod.Spec.InitContainers {
			if i < len(pr.inits) {
				pr.inits[i].spec.Image = pod.Spec.InitContainers[i].Image
			}
		}
		for i := range pod.Spec.Containers {
			if i < len(pr.ctrs) {
				pr.ctrs[i].spec.Image = pod.Spec.Containers[i].Image
			}
		}
	}
	close(pr.updated)
	pr.updated = make(chan struct{})
	pr.mu.Unlock()
}

// updates is closed at the next UpdatePod.
func (pr *podRT) updates() <-chan struct{} {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.updated
}

// sleepUnlessUpdated waits d, or until updated is closed; false means stopped.
func (pr *podRT) sleepUnlessUpdated(d time.Duration, updated <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-updated:
	case <-pr.ctx.Done():
		return false
	}
	return true
}

func (pr *podRT) all() []*ctrState { return append(append([]*ctrState{}, pr.inits...), pr.ctrs...) }

func (pr *podRT) container(name string) *ctrState {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for _, c := range pr.all() {
		if c.spec.Name == name {
			return c
		}
	}
	return nil
}

func (pr *podRT) changed() { pr.p.changed(pr) }

// sleep waits d or until the pod is stopped; false means stopped.
func (pr *podRT) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-pr.ctx.Done():
		return false
	}
}

// run drives the pod from admission to its containers running: the sandbox
// (namespace) first, then each container pulls its image and starts, init
// containers one by one to completion, as a kubelet does.
func (pr *podRT) run() {
	if !pr.checkCommands() {
		return
	}
	nw, err := pr.p.nw.addPod(string(pr.uid()), pr.names())
	if err != nil {
		pr.fail("NetworkSetupFailed", err.Error())
		return
	}
	pr.mu.Lock()
	pr.net = nw
	abandoned := pr.deleting
	pr.mu.Unlock()
	if abandoned { // terminate ran while we set up; it could not see the namespace
		pr.p.nw.removePod(nw)
		return
	}
	pr.setCond(v1.PodReadyToStartContainers, true, "")
	pr.changed()
	if err := pr.makeDirs(); err != nil {
		pr.fail("PodDirFailed", err.Error())
		return
	}
	for _, c := range pr.inits {
		if !c.runToCompletion() {
			return
		}
	}
	pr.mu.Lock()
	pr.initDone = true
	pr.mu.Unlock()
	pr.changed()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.deleting { // terminate may already be waiting on wg: adding now would race it
		return
	}
	// Each container's first pull waits for the previous container's: the
	// kubelet's pod sync ensures images one container at a time.
	prev := make(chan struct{})
	close(prev)
	for _, c := range pr.ctrs {
		pr.wg.Add(1)
		after, attempted := prev, make(chan struct{})
		go func() {
			defer pr.wg.Done()
			select {
			case <-after:
			case <-pr.ctx.Done():
				return
			}
			c.loop(sync.OnceFunc(func() { close(attempted) }))
		}()
		prev = attempted
	}
}

// checkCommands fails the pod if a container has no command: without the
// image we cannot know its entrypoint, and guessing would run the wrong thing.
func (pr *podRT) checkCommands() bool {
	pr.mu.Lock()
	var bad *ctrState
	for _, c := range pr.all() {
		if len(c.spec.Command) == 0 {
			bad = c
			break
		}
	}
	pr.mu.Unlock()
	if bad == nil {
		return true
	}
	msg := fmt.Sprintf("container %q has no command: the node agent cannot read the entrypoint of image %q, so spec.containers[].command must be set", bad.spec.Name, bad.spec.Image)
	pr.mu.Lock()
	bad.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "CreateContainerError", Message: msg}}
	pr.mu.Unlock()
	pr.fail("ContainerCommandRequired", msg)
	return false
}

func (pr *podRT) fail(reason, msg string) {
	pr.logf("failed: %s: %s", reason, msg)
	pr.mu.Lock()
	pr.failReason, pr.failMessage = reason, msg
	pr.mu.Unlock()
	pr.changed()
}

func (pr *podRT) makeDirs() error {
	if err := os.MkdirAll(filepath.Join(pr.dir, "logs"), 0o755); err != nil {
		return err
	}
	// Volumes cannot be mounted at their mountPath; emptyDirs at least exist.
	for _, v := range pr.spec().Volumes {
		if v.EmptyDir != nil {
			if err := os.MkdirAll(filepath.Join(pr.dir, "volumes", v.Name), 0o755); err != nil {
				return err
			}
		}
	}
	return nil
}

// terminate stops the pod: SIGTERM to each container's process group and to
// everything else in the namespace, SIGKILL after grace, then the namespace
// goes. report=false is agent shutdown, where the API server is not told.
func (pr *podRT) terminate(grace time.Duration, report bool) {
	first := false
	pr.once.Do(func() { first = true })
	if !first {
		<-pr.exited
		return
	}
	defer close(pr.exited)
	pr.mu.Lock()
	pr.deleting = true
	nw := pr.net
	pr.mu.Unlock()
	pr.cancel()
	pr.logf("stopping (grace %s)", grace)
	for _, c := range pr.all() {
		c.signal(sigTERM)
	}
	if nw != nil {
		signalNetns(nw.netns, sigTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && pr.anyAlive() {
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range pr.all() {
		c.signal(sigKILL)
	}
	pr.wg.Wait()
	for _, c := range pr.all() {
		c.waitExited()
	}
	if nw != nil {
		pr.p.nw.removePod(nw)
	}
	pr.mu.Lock()
	pr.stopped = true
	for _, c := range pr.all() {
		c.ready = false
		if c.state.Terminated == nil && (c.state.Waiting != nil || c.state.Running != nil) {
			if c.state.Running != nil {
				c.last = c.state
			}
			c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: 137,
				Reason: "ContainerStatusUnknown", Message: "The container was stopped before it could run to completion",
				FinishedAt: metav1.Now()}}
		}
	}
	pr.mu.Unlock()
	if report {
		pr.changed()
		// Let the notifier send the terminal status before we stop answering for the pod.
		time.Sleep(2 * time.Second)
	}
	pr.p.forget(pr)
}

func (pr *podRT) anyAlive() bool {
	for _, c := range pr.all() {
		if c.alive() {
			return true
		}
	}
	pr.mu.Lock()
	nw := pr.net
	pr.mu.Unlock()
	return nw != nil && len(netnsPids(nw.netns)) > 0
}
