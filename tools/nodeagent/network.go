// Pod networking without a CNI plugin: one bridge per agent, one network
// namespace + veth per pod, addresses from 198.18.N.0/24 (RFC 2544 benchmarking
// space, never routed on the internet). Every object is recorded under
// --state-dir before or right after it is created, so `nodeagent cleanup` can
// undo a crashed agent's work. We shell out to `ip` rather than use a netlink
// library: the commands are few, easy to reproduce by hand when debugging,
// and keep the dependency set to what virtual-kubelet already pulls in.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/sirupsen/logrus"
)

const podSupernet = "198.18.0.0/15"

type network struct {
	dir    string // <state-dir>/net: one file per created object
	n      int
	bridge string
	dns    *clusterDNS // writes each pod's /etc/netns files; nil writes none

	mu   sync.Mutex
	used map[int]bool // host parts handed out in 198.18.n.0/24
	last int          // the host part handed out last
}

type podNet struct {
	netns, veth, ip string
	host            int
}

func ipCmd(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// setupNetwork claims the first free rfbrN. Creating the bridge is the lock:
// the kernel refuses a second link of the same name, so concurrent agents
// (one per test cluster) never share a /24.
func setupNetwork(stateDir string) (*network, error) {
	dir := filepath.Join(stateDir, "net")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for n := 0; n < 256; n++ {
		name := fmt.Sprintf("rfbr%d", n)
		if out, err := ipCmd("link", "add", name, "type", "bridge"); err != nil {
			if strings.Contains(out, "exists") {
				continue
			}
			return nil, err
		}
		nw := &network{dir: dir, n: n, bridge: name, used: map[int]bool{}}
		if err := os.WriteFile(filepath.Join(dir, "bridge"), []byte(name+"\n"), 0o644); err != nil {
			ipCmd("link", "del", name)
			return nil, err
		}
		// The blackhole must exist before the bridge is up: from then on pod
		// addresses are in use, and a packet for one that has no pod yet
		// must die here instead of following the default route out of eth0.
		if err := ensureBlackhole(); err != nil {
			nw.close()
			return nil, err
		}
		if _, err := ipCmd("addr", "add", fmt.Sprintf("198.18.%d.1/24", n), "dev", name); err != nil {
			nw.close()
			return nil, err
		}
		if _, err := ipCmd("link", "set", name, "up"); err != nil {
			nw.close()
			return nil, err
		}
		return nw, nil
	}
	return nil, fmt.Errorf("no free bridge name rfbr0..rfbr255")
}

func ensureBlackhole() error {
	out, err := ipCmd("route", "add", "blackhole", podSupernet)
	if err != nil && !strings.Contains(out, "exists") {
		return err
	}
	return nil
}

func hashUID(uid string) string {
	sum := sha256.Sum256([]byte(uid))
	return hex.EncodeToString(sum[:4])
}

func (nw *network) podRecord(h string) string { return filepath.Join(nw.dir, "pod-"+h) }

// addPod builds the pod's namespace. Inside it, the default route points at a
// device that drops everything: programs that learn their address by
// connecting a UDP socket to a public IP (Ray does, to 8.8.8.8) get the pod
// IP, yet nothing can leave the pod except to its /24.
func (nw *network) addPod(uid string, names podNames) (*podNet, error) {
	h := hashUID(uid)
	p := &podNet{netns: fmt.Sprintf("rf%d-%s", nw.n, h), veth: fmt.Sprintf("rfv%d-%s", nw.n, h)}
	// Addresses go round, the one after the last first: an address given
	// back is not handed out again at once, so what still points at the
	// pod that had it (a connection, an endpoint) does not reach a new one.
	nw.mu.Lock()
	last := max(nw.last, 1) // none yet: 2 comes first
	for i := 1; i <= 253; i++ {
		k := 2 + (last-2+i)%253
		if !nw.used[k] {
			p.host = k
			nw.used[k] = true
			nw.last = k
			break
		}
	}
	nw.mu.Unlock()
	if p.host == 0 {
		return nil, fmt.Errorf("no free address in 198.18.%d.0/24", nw.n)
	}
	p.ip = fmt.Sprintf("198.18.%d.%d", nw.n, p.host)
	if err := os.WriteFile(nw.podRecord(h), []byte(p.netns+"\n"+p.veth+"\n"), 0o644); err != nil {
		nw.release(p)
		return nil, err
	}
	steps := [][]string{
		{"netns", "add", p.netns},
		{"link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.netns},
		{"link", "set", p.veth, "master", nw.bridge, "up"},
		{"-n", p.netns, "addr", "add", p.ip + "/24", "dev", "eth0"},
		{"-n", p.netns, "link", "set", "lo", "up"},
		{"-n", p.netns, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if _, err := ipCmd(s...); err != nil {
			nw.removePod(p)
			return nil, err
		}
	}
	if err := addSink(p.netns); err != nil {
		nw.removePod(p)
		return nil, err
	}
	if _, err := ipCmd("-n", p.netns, "route", "add", "default", "dev", "dummy0"); err != nil {
		nw.removePod(p)
		return nil, err
	}
	if err := nw.dns.add(p, names); err != nil {
		nw.removePod(p)
		return nil, err
	}
	return p, nil
}

// addSink creates dummy0, a device that silently drops what is sent to it.
// Kernels without the dummy driver (this test machine) get an ifb device,
// which drops every packet not redirected to it by tc, or failing that a veth
// whose peer stays down.
func addSink(ns string) error {
	var errs []string
	for _, kind := range [][]string{{"type", "dummy"}, {"type", "ifb"}, {"type", "veth", "peer", "name", "dummy0p"}} {
		_, err := ipCmd(append([]string{"-n", ns, "link", "add", "dummy0"}, kind...)...)
		if err == nil {
			_, err = ipCmd("-n", ns, "link", "set", "dummy0", "up")
			return err
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("no sink device: %s", strings.Join(errs, "; "))
}

func (nw *network) release(p *podNet) {
	nw.mu.Lock()
	delete(nw.used, p.host)
	nw.mu.Unlock()
}

// removePod kills whatever still runs in the namespace, then deletes it.
// Connections the host still holds to the pod's address are aborted: once
// the address leads nowhere, their packets are dropped unanswered, and a
// peer with no deadline of its own (the API server's pod proxy, which pools
// connections, for KubeRay's Serve health checks) would wait minutes for
// TCP to give up, holding every caller behind it.
func (nw *network) removePod(p *podNet) {
	nw.dns.forget(p.netns)
	teardownPodNet(p.netns, p.veth)
	if out, err := exec.Command("ss", "-K", "dst", p.ip).CombinedOutput(); err != nil {
		logrus.Warnf("aborting host connections to %s: %v: %s", p.ip, err, out)
	}
	os.Remove(nw.podRecord(strings.TrimPrefix(p.netns, fmt.Sprintf("rf%d-", nw.n))))
	nw.release(p)
}

func teardownPodNet(netns, veth string) {
	signalNetns(netns, syscall.SIGKILL)
	ipCmd("link", "del", veth)
	ipCmd("netns", "del", netns)
	os.RemoveAll(podTmp(netns))
	removePodEtc(netns)
}

// podTmp is the pod's own temporary directory (its TMPDIR), as a container
// has its own /tmp: two Ray heads must not share /tmp/ray. Short on purpose:
// Ray puts Unix sockets under it, and their paths are limited to 107 bytes.
func podTmp(netns string) string { return filepath.Join("/tmp", "rayform-"+netns) }

// netnsPids lists processes whose network namespace is netns: a container may
// have left its process group (daemons, setsid), never its namespace.
func netnsPids(netns string) []int {
	out, err := exec.Command("ip", "netns", "pids", netns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

func signalNetns(netns string, sig syscall.Signal) int {
	pids := netnsPids(netns)
	for _, pid := range pids {
		syscall.Kill(pid, sig)
	}
	return len(pids)
}

// close removes the bridge, and the blackhole once no agent's bridge remains.
func (nw *network) close() {
	ipCmd("link", "del", nw.bridge)
	os.Remove(filepath.Join(nw.dir, "bridge"))
	dropBlackholeIfUnused()
}

func dropBlackholeIfUnused() {
	out, err := ipCmd("-o", "link", "show", "type", "bridge")
	if err != nil {
		return
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(strings.TrimSuffix(f[1], ":"), "rfbr") {
			return
		}
	}
	ipCmd("route", "del", "blackhole", podSupernet)
}

// cleanupState undoes everything recorded under stateDir, for an agent that
// died without cleaning up (kill -9); its pods' processes are still running.
func cleanupState(stateDir string) error {
	dir := filepath.Join(stateDir, "net")
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "pod-") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) == 2 {
			teardownPodNet(f[0], f[1])
		}
		os.Remove(filepath.Join(dir, e.Name()))
	}
	if b, err := os.ReadFile(filepath.Join(dir, "bridge")); err == nil {
		if name := strings.TrimSpace(string(b)); strings.HasPrefix(name, "rfbr") {
			ipCmd("link", "del", name)
		}
		os.Remove(filepath.Join(dir, "bridge"))
	}
	dropBlackholeIfUnused()
	return nil
}
