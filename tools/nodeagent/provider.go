// The virtual-kubelet provider: the pod controller hands us pods bound to our
// node, we run them (pod.go) and push every status change back through the
// notifier so the API server sees it without waiting for a poll.
package main

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
)

type agentConfig struct {
	// nodeName is the agent's own node; each served node's provider gets a
	// copy that names the node it serves.
	kubeconfig, nodeName, tlsCert, tlsKey, stateDir string
	port                                            int
	images                                          []imageRule
	extraEnv                                        []string
	serveProviderIDPrefix                           string // "" serves no other node
	pulls                                           pullConfig
}

type provider struct {
	cfg        agentConfig
	nw         *network
	client     kubernetes.Interface
	secrets    corev1listers.SecretLister
	configMaps corev1listers.ConfigMapLister
	node       *v1.Node // allocatable backs resourceFieldRef limits that are unset
	images     *imageStore
	eventsOut  record.EventBroadcaster
	events     record.EventRecorder

	mu   sync.Mutex
	pods map[string]*podRT

	// Notifications are coalesced per pod and sent by one goroutine that
	// snapshots the status at send time, so a stale snapshot can never
	// overtake a newer one.
	dirty    map[string]bool
	kick     chan struct{}
	notifyFn func(*v1.Pod)
	notifyMu sync.Mutex
}

func newProvider(cfg agentConfig, nw *network, client kubernetes.Interface) *provider {
	eventsOut, events := newKubeletEvents(client, cfg.nodeName)
	return &provider{cfg: cfg, nw: nw, client: client, pods: map[string]*podRT{},
		images: newImageStore(cfg.pulls, cfg.images), eventsOut: eventsOut, events: events,
		dirty: map[string]bool{}, kick: make(chan struct{}, 1)}
}

func podKey(ns, name string) string { return ns + "/" + name }

func (p *provider) lookup(ns, name string) (*podRT, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr := p.pods[podKey(ns, name)]
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not known to the node agent", ns, name)
	}
	return pr, nil
}

func (p *provider) CreatePod(ctx context.Context, pod *v1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	if old := p.pods[key]; old != nil && old.uid() == pod.UID {
		p.mu.Unlock()
		return nil
	}
	pr := newPodRT(p, pod)
	p.pods[key] = pr
	p.mu.Unlock()
	log.G(ctx).Infof("starting pod %s", key)
	go pr.run()
	return nil
}

// UpdatePod: the only mutable spec fields are images, labels, annotations and
// the like; a pod waiting for an image gets another look at its images.
func (p *provider) UpdatePod(ctx context.Context, pod *v1.Pod) error {
	pr, err := p.lookup(pod.Namespace, pod.Name)
	if err != nil {
		return err
	}
	pr.update(pod)
	return nil
}

// DeletePod must not block for the grace period: it runs on a pod-controller
// worker. The terminal status is reported via the notifier when done.
func (p *provider) DeletePod(ctx context.Context, pod *v1.Pod) error {
	pr, err := p.lookup(pod.Namespace, pod.Name)
	if err != nil {
		return err
	}
	grace := int64(30)
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	go func() {
		pr.terminate(time.Duration(grace)*time.Second, true)
		p.deleteStopped(pod)
	}()
	return nil
}

// deleteStopped removes the pod object once its containers are gone, as a
// kubelet does. virtual-kubelet alone would wait out the whole grace period,
// and a drain (Karpenter's) waits for the object, not the processes.
func (p *provider) deleteStopped(pod *v1.Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := metav1.NewDeleteOptions(0)
	opts.Preconditions = metav1.NewUIDPreconditions(string(pod.UID))
	err := p.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, *opts)
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		log.G(ctx).Warnf("deleting stopped pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
}

func (p *provider) forget(pr *podRT) {
	p.mu.Lock()
	if p.pods[pr.key] == pr {
		delete(p.pods, pr.key)
	}
	p.mu.Unlock()
}

func (p *provider) GetPod(ctx context.Context, ns, name string) (*v1.Pod, error) {
	pr, err := p.lookup(ns, name)
	if err != nil {
		return nil, err
	}
	return pr.snapshot(), nil
}

func (p *provider) GetPodStatus(ctx context.Context, ns, name string) (*v1.PodStatus, error) {
	pr, err := p.lookup(ns, name)
	if err != nil {
		return nil, err
	}
	return &pr.snapshot().Status, nil
}

func (p *provider) GetPods(ctx context.Context) ([]*v1.Pod, error) {
	p.mu.Lock()
	prs := make([]*podRT, 0, len(p.pods))
	for _, pr := range p.pods {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	out := make([]*v1.Pod, 0, len(prs))
	for _, pr := range prs {
		out = append(out, pr.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// NotifyPods implements node.PodNotifier.
func (p *provider) NotifyPods(ctx context.Context, cb func(*v1.Pod)) {
	p.notifyMu.Lock()
	p.notifyFn = cb
	p.notifyMu.Unlock()
	go p.notifyLoop(ctx)
}

func (p *provider) changed(pr *podRT) {
	p.mu.Lock()
	p.dirty[pr.key] = true
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *provider) notifyLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		p.mu.Lock()
		var prs []*podRT
		for key := range p.dirty {
			if pr := p.pods[key]; pr != nil {
				prs = append(prs, pr)
			}
		}
		p.dirty = map[string]bool{}
		p.mu.Unlock()
		p.notifyMu.Lock()
		cb := p.notifyFn
		p.notifyMu.Unlock()
		for _, pr := range prs {
			cb(pr.snapshot())
		}
	}
}

// getSecret prefers the informer cache but falls back to the API server: a
// Secret created just before its pod may not have reached the cache yet.
func (p *provider) getSecret(ns, name string) (*v1.Secret, error) {
	if s, err := p.secrets.Secrets(ns).Get(name); err == nil {
		return s, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
}

func (p *provider) getConfigMap(ns, name string) (*v1.ConfigMap, error) {
	if c, err := p.configMaps.ConfigMaps(ns).Get(name); err == nil {
		return c, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
}

// shutdownGrace caps each pod's grace period when the agent itself stops:
// that is `testcluster down`, which throws the whole cluster away and would
// otherwise wait out a Ray head's 30 s (Ray ignores SIGTERM for that long).
const shutdownGrace = 3 * time.Second

// shutdown stops every pod in parallel, each with its grace period capped.
func (p *provider) shutdown() {
	p.mu.Lock()
	var prs []*podRT
	for _, pr := range p.pods {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, pr := range prs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			grace := int64(30)
			if g := pr.spec().TerminationGracePeriodSeconds; g != nil {
				grace = *g
			}
			pr.terminate(min(time.Duration(grace)*time.Second, shutdownGrace), false)
		}()
	}
	wg.Wait()
	p.eventsOut.Shutdown()
}
