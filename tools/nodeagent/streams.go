// The kubelet API's streaming endpoints: container logs (from the per-run log
// file), exec (a new process in the pod's namespace) and port-forward (a TCP
// connection to the pod IP).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	utilexec "k8s.io/utils/exec"
)

func (p *provider) GetContainerLogs(ctx context.Context, ns, podName, container string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	pr, err := p.lookup(ns, podName)
	if err != nil {
		return nil, err
	}
	c := pr.container(container)
	if c == nil {
		return nil, errdefs.NotFoundf("container %q not found in pod %s", container, pr.key)
	}
	path := c.logPath()
	if opts.Previous {
		path += ".prev"
	}
	inst := c.current()
	f, err := os.Open(path)
	if err != nil {
		return nil, errdefs.NotFoundf("no logs for container %q of pod %s yet", container, pr.key)
	}
	if opts.Tail > 0 {
		if err := seekTail(f, opts.Tail); err != nil {
			f.Close()
			return nil, err
		}
	}
	var r io.ReadCloser = f
	if opts.Follow && !opts.Previous && inst != nil {
		r = &followReader{f: f, ctx: ctx, done: inst.done}
	}
	if opts.LimitBytes > 0 {
		r = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(r, int64(opts.LimitBytes)), r}
	}
	return r, nil
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	end := st.Size()
	buf := make([]byte, 32*1024)
	lines := 0
	pos := end
	for pos > 0 {
		chunk := int64(len(buf))
		if pos < chunk {
			chunk = pos
		}
		pos -= chunk
		if _, err := f.ReadAt(buf[:chunk], pos); err != nil && err != io.EOF {
			return err
		}
		for i := chunk - 1; i >= 0; i-- {
			if buf[i] != '\n' || pos+i == end-1 {
				continue
			}
			if lines++; lines == n {
				_, err := f.Seek(pos+i+1, io.SeekStart)
				return err
			}
		}
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// followReader is `tail -f` until the container run ends or the client leaves.
type followReader struct {
	f    *os.File
	ctx  context.Context
	done <-chan struct{}
}

func (r *followReader) Read(b []byte) (int, error) {
	for {
		n, err := r.f.Read(b)
		if n > 0 || err != io.EOF {
			return n, err
		}
		select {
		case <-r.ctx.Done():
			return 0, io.EOF
		case <-r.done:
			// Drain what the process wrote before it exited.
			if n, err = r.f.Read(b); n > 0 {
				return n, nil
			}
			return 0, io.EOF
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *followReader) Close() error { return r.f.Close() }

// RunInContainer runs cmd in the pod's namespace with the container's
// environment. There is no pseudo-terminal: with -t the streams are plain pipes.
func (p *provider) RunInContainer(ctx context.Context, ns, podName, container string, cmd []string, attach api.AttachIO) error {
	pr, err := p.lookup(ns, podName)
	if err != nil {
		return err
	}
	c := pr.container(container)
	if c == nil {
		return errdefs.NotFoundf("container %q not found in pod %s", container, pr.key)
	}
	inst := c.current()
	pr.mu.Lock()
	nw := pr.net
	pr.mu.Unlock()
	if inst == nil || !c.alive() || nw == nil {
		return fmt.Errorf("container %q of pod %s is not running", container, pr.key)
	}
	if len(cmd) == 0 {
		return errors.New("no command given")
	}
	x := exec.Command("ip", append([]string{"netns", "exec", nw.netns}, cmd...)...)
	x.Env, x.Dir = inst.env, pr.dir
	x.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if attach.Stdin() != nil {
		x.Stdin = attach.Stdin()
	}
	if attach.Stdout() != nil {
		x.Stdout = attach.Stdout()
	}
	if attach.Stderr() != nil {
		x.Stderr = attach.Stderr()
	} else if attach.TTY() {
		x.Stderr = attach.Stdout()
	}
	if err := x.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			syscall.Kill(-x.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	err = x.Wait()
	close(done)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code, _ := exitCodeOf(ee.ProcessState)
		return utilexec.CodeExitError{Err: err, Code: int(code)}
	}
	return err
}

func (p *provider) AttachToContainer(ctx context.Context, ns, podName, container string, attach api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by the node agent: containers have no stdin; use logs -f")
}

// PortForward copies bytes between the stream and podIP:port. A refused
// connection is returned as an error, which the library writes to the
// port-forward error stream as a kubelet does.
func (p *provider) PortForward(ctx context.Context, ns, podName string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	pr, err := p.lookup(ns, podName)
	if err != nil {
		return err
	}
	pr.mu.Lock()
	nw := pr.net
	pr.mu.Unlock()
	if nw == nil {
		return fmt.Errorf("pod %s has no network yet", pr.key)
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := d.DialContext(dctx, "tcp4", net.JoinHostPort(nw.ip, strconv.Itoa(int(port))))
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close()
	// Client-to-pod EOF half-closes the connection so the pod still answers;
	// pod-to-client EOF ends the forward.
	go func() {
		io.Copy(conn, stream)
		conn.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(stream, conn)
	return nil
}

func (p *provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: p.cfg.nodeName, StartTime: metav1.Now()}}, nil
}

func (p *provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}
