// One container of a pod as a process tree: started through
// `ip netns exec` in its own process group, restarted per restartPolicy with
// a crash-loop back-off, and watched by its probes (probe.go).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	sigTERM = syscall.SIGTERM
	sigKILL = syscall.SIGKILL
)

type ctrState struct {
	pr     *podRT
	spec   v1.Container
	init   bool
	binDir string

	// guarded by pr.mu
	state, last v1.ContainerState
	restarts    int32
	ready       bool
	started     bool
	inst        *instance
	backoff     time.Duration
	pullBackoff pullBackoff
}

// instance is one run of the container's process.
type instance struct {
	id       string
	pgid     int
	env      []string
	done     chan struct{}
	exitCode int32
	signaled bool
	cancel   context.CancelFunc // stops its probes
}

func newCtrState(pr *podRT, c v1.Container, init bool) *ctrState {
	return &ctrState{pr: pr, spec: c, init: init,
		state: v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "ContainerCreating"}}}
}

func (c *ctrState) logPath() string {
	return filepath.Join(c.pr.dir, "logs", c.spec.Name+".log")
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func exitCodeOf(ps *os.ProcessState) (int32, bool) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int32(ws.Signal()), true
	}
	return int32(ps.ExitCode()), false
}

// start launches one instance; it returns nil, nil if the pod is stopping.
func (c *ctrState) start() (*instance, error) {
	env, argv, err := c.pr.p.containerEnv(c.pr, &c.spec, c.binDir)
	if err != nil {
		return nil, &configError{err}
	}
	if _, err := lookPath(argv[0], env); err != nil {
		return nil, err
	}
	home := envValue(env, "HOME")
	if err := writeLoginProfile(home, envValue(env, "PATH")); err != nil {
		return nil, err
	}
	// The previous run's log stays readable for `kubectl logs --previous`.
	os.Rename(c.logPath(), c.logPath()+".prev")
	logf, err := os.OpenFile(c.logPath(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	pr := c.pr
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.deleting {
		return nil, nil
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", pr.net.netns}, argv...)...)
	cmd.Env, cmd.Dir = env, pr.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	inst := &instance{id: newID(), pgid: cmd.Process.Pid, env: env, done: make(chan struct{})}
	var pctx context.Context
	pctx, inst.cancel = context.WithCancel(pr.ctx)
	go func() {
		cmd.Wait()
		inst.exitCode, inst.signaled = exitCodeOf(cmd.ProcessState)
		inst.cancel()
		close(inst.done)
	}()
	c.inst = inst
	c.state = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: metav1.Now()}}
	c.started = c.spec.StartupProbe == nil
	c.ready = c.spec.ReadinessProbe == nil && c.started && !c.init
	go c.probe(pctx, inst)
	return inst, nil
}

type configError struct{ error }

// writeLoginProfile keeps a login shell's PATH: KubeRay wraps commands in
// `bash -lc`, and /etc/profile would reset PATH and lose the image's bin dir.
func writeLoginProfile(home, path string) error {
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	line := "PATH='" + strings.ReplaceAll(path, "'", `'\''`) + "'; export PATH\n"
	for _, f := range []string{".bash_profile", ".profile"} {
		if err := os.WriteFile(filepath.Join(home, f), []byte(line), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		if st, err := os.Stat(file); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("exec: %q: not an executable file", file)
		}
		return file, nil
	}
	for _, dir := range filepath.SplitList(envValue(env, "PATH")) {
		p := filepath.Join(dir, file)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", file)
}

// runOnce starts the container and waits for it; ok=false if it never ran.
func (c *ctrState) runOnce() (code int32, ok bool) {
	inst, err := c.start()
	pr := c.pr
	if inst == nil && err == nil {
		return 0, false
	}
	if err != nil {
		reason := "StartError"
		var ce *configError
		if errors.As(err, &ce) {
			reason = "CreateContainerConfigError"
		}
		pr.logf("container %s: %s: %v", c.spec.Name, reason, err)
		pr.mu.Lock()
		if reason == "StartError" {
			now := metav1.Now()
			c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: 128, Reason: reason,
				Message: err.Error(), StartedAt: now, FinishedAt: now, ContainerID: "nodeagent://" + newID()}}
		} else {
			c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: err.Error()}}
		}
		pr.mu.Unlock()
		pr.changed()
		if reason == "StartError" {
			return 128, true
		}
		return 0, false
	}
	c.event(v1.EventTypeNormal, "Created", "Container created")
	c.event(v1.EventTypeNormal, "Started", "Container started")
	pr.changed()
	<-inst.done
	pr.mu.Lock()
	started := c.state.Running.StartedAt
	reason := "Completed"
	if inst.exitCode != 0 {
		reason = "Error"
	}
	c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: inst.exitCode, Reason: reason,
		StartedAt: started, FinishedAt: metav1.Now(), ContainerID: "nodeagent://" + inst.id}}
	c.ready = false
	if time.Since(started.Time) > 10*time.Minute {
		c.backoff = 0 // a long healthy run forgives earlier crashes, as in a kubelet
	}
	pr.mu.Unlock()
	pr.logf("container %s exited with %d", c.spec.Name, inst.exitCode)
	pr.changed()
	return inst.exitCode, true
}

func (c *ctrState) shouldRestart(code int32) bool {
	switch c.pr.spec().RestartPolicy {
	case v1.RestartPolicyNever:
		return false
	case v1.RestartPolicyOnFailure:
		return code != 0
	}
	return !c.init || code != 0
}

// waitBackoff shows CrashLoopBackOff and sleeps; false if the pod stopped.
func (c *ctrState) waitBackoff(ran bool) bool {
	pr := c.pr
	pr.mu.Lock()
	if c.backoff == 0 {
		c.backoff = 10 * time.Second
	} else if c.backoff < 60*time.Second {
		c.backoff = min(2*c.backoff, 60*time.Second)
	}
	d := c.backoff
	if ran && c.state.Terminated != nil {
		c.last = c.state
		c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", d, c.spec.Name, pr.pod.Name)}}
	}
	pr.mu.Unlock()
	pr.changed()
	if !pr.sleep(d) {
		return false
	}
	if ran {
		pr.mu.Lock()
		c.restarts++
		pr.mu.Unlock()
	}
	return true
}

// loop runs a regular container for the life of the pod; every start, the
// first and each restart, goes through the image manager as in a kubelet.
func (c *ctrState) loop(attempted func()) {
	for c.pr.ctx.Err() == nil {
		if !c.awaitImage(attempted) {
			return
		}
		code, ran := c.runOnce()
		if c.pr.ctx.Err() != nil {
			return
		}
		if ran && !c.shouldRestart(code) {
			return
		}
		if !c.waitBackoff(ran) {
			return
		}
	}
}

// runToCompletion runs an init container until it succeeds; false means the
// pod must not go on (it failed for good, or is being stopped).
func (c *ctrState) runToCompletion() bool {
	for c.pr.ctx.Err() == nil {
		if !c.awaitImage(func() {}) {
			return false
		}
		code, ran := c.runOnce()
		if c.pr.ctx.Err() != nil {
			return false
		}
		if ran && code == 0 {
			return true
		}
		if ran && !c.shouldRestart(code) {
			c.pr.fail("InitContainerFailed", fmt.Sprintf("init container %q exited with %d", c.spec.Name, code))
			return false
		}
		if !c.waitBackoff(ran) {
			return false
		}
	}
	return false
}

func (c *ctrState) current() *instance {
	c.pr.mu.Lock()
	defer c.pr.mu.Unlock()
	return c.inst
}

func (c *ctrState) alive() bool {
	inst := c.current()
	if inst == nil {
		return false
	}
	select {
	case <-inst.done:
		return false
	default:
		return true
	}
}

func (c *ctrState) signal(sig syscall.Signal) {
	if c.alive() {
		syscall.Kill(-c.current().pgid, sig)
	}
}

func (c *ctrState) waitExited() {
	if inst := c.current(); inst != nil {
		<-inst.done
	}
}

// killInstance stops one run (liveness/startup failure) with the pod's
// grace period; the restart loop then applies restartPolicy.
func (c *ctrState) killInstance(inst *instance, why string) {
	c.pr.logf("container %s: %s, killing it", c.spec.Name, why)
	grace := int64(30)
	if g := c.pr.spec().TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	syscall.Kill(-inst.pgid, sigTERM)
	select {
	case <-inst.done:
	case <-time.After(time.Duration(grace) * time.Second):
		syscall.Kill(-inst.pgid, sigKILL)
	}
}
