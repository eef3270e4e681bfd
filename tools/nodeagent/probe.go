// Startup, readiness and liveness probes of one container run. Exec probes
// run inside the pod's namespace with the container's environment; HTTP and
// TCP probes dial the pod IP from the agent's namespace, which reaches it
// through the bridge.
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func (c *ctrState) probe(ctx context.Context, inst *instance) {
	started := make(chan struct{})
	if sp := c.spec.StartupProbe; sp != nil {
		go func() {
			if c.runProbe(ctx, inst, sp, "Startup", func(ok bool) bool { return ok }) {
				c.pr.mu.Lock()
				c.started = true
				c.ready = c.spec.ReadinessProbe == nil && !c.init
				c.pr.mu.Unlock()
				c.pr.changed()
				close(started)
			}
		}()
	} else {
		close(started)
	}
	after := func(f func()) {
		go func() {
			select {
			case <-ctx.Done():
			case <-started:
				f()
			}
		}()
	}
	if rp := c.spec.ReadinessProbe; rp != nil {
		after(func() {
			c.runProbe(ctx, inst, rp, "Readiness", func(ok bool) bool {
				c.pr.mu.Lock()
				changed := c.ready != ok && c.inst == inst
				if changed {
					c.ready = ok
				}
				c.pr.mu.Unlock()
				if changed {
					c.pr.changed()
				}
				return false
			})
		})
	}
	if lp := c.spec.LivenessProbe; lp != nil {
		after(func() {
			c.runProbe(ctx, inst, lp, "Liveness", func(ok bool) bool { return false })
		})
	}
}

// runProbe probes every period until ctx ends. onResult sees each
// threshold-crossing result and returns true to stop probing. Startup and
// liveness kill the run when failureThreshold is reached.
func (c *ctrState) runProbe(ctx context.Context, inst *instance, p *v1.Probe, kind string, onResult func(bool) bool) bool {
	period := secs(p.PeriodSeconds, 10)
	if !sleepCtx(ctx, time.Duration(p.InitialDelaySeconds)*time.Second) {
		return false
	}
	succ, fail := 0, 0
	for {
		err := c.probeOnce(ctx, inst, p)
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			succ, fail = succ+1, 0
			if succ >= int(max(p.SuccessThreshold, 1)) && onResult(true) {
				return true
			}
		} else {
			succ, fail = 0, fail+1
			if fail >= int(max(p.FailureThreshold, 1)) {
				if kind != "Readiness" {
					c.pr.logf("container %s: %s probe failed: %v", c.spec.Name, kind, err)
					c.killInstance(inst, kind+" probe failed")
					return false
				}
				onResult(false)
			}
		}
		if !sleepCtx(ctx, period) {
			return false
		}
	}
}

func secs(v int32, def int) time.Duration {
	if v <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(v) * time.Second
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *ctrState) probeOnce(ctx context.Context, inst *instance, p *v1.Probe) error {
	timeout := secs(p.TimeoutSeconds, 1)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c.pr.mu.Lock()
	podIP, netns := "", ""
	if c.pr.net != nil {
		podIP, netns = c.pr.net.ip, c.pr.net.netns
	}
	c.pr.mu.Unlock()
	switch {
	case p.Exec != nil:
		if len(p.Exec.Command) == 0 {
			return fmt.Errorf("empty exec probe")
		}
		cmd := exec.Command("ip", append([]string{"netns", "exec", netns}, p.Exec.Command...)...)
		cmd.Env, cmd.Dir = inst.env, c.pr.dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return fmt.Errorf("probe timed out after %s", timeout)
		}
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := c.resolvePort(g.Port)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = podIP
		}
		scheme := "http"
		if g.Scheme == v1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), g.Path), nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		req.Header.Set("User-Agent", "kube-probe/nodeagent")
		// Kubelets do not verify probe certificates either.
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := c.resolvePort(p.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return fmt.Errorf("unsupported probe handler (grpc probes are not implemented)")
}

func (c *ctrState) resolvePort(p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("no container port named %q", p.StrVal)
}
