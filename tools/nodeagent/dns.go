// Cluster DNS without a DNS server. The test cluster has neither CoreDNS nor
// kube-proxy, yet pods find each other by Service name: a KubeRay worker's
// init container waits for `<cluster>-head-svc.<ns>.svc.cluster.local:6379`.
// `ip netns exec`, which starts every container, bind-mounts each file of
// /etc/netns/<netns>/ over the same name in /etc (man ip-netns), so every pod
// gets its own /etc/hosts, written from the Services and EndpointSlices the
// agent watches, and its own /etc/resolv.conf with the cluster's search path
// and a nameserver that cannot answer: nsswitch looks in files before dns, so
// the hosts file answers, and a name it lacks fails at once without a packet
// leaving the pod.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

const (
	clusterDomain = "cluster.local"
	netnsEtc      = "/etc/netns"
	// refreshDelay gathers a burst of events (a RayCluster brings two
	// Services and their slices at once) into one rewrite of every file.
	refreshDelay = 100 * time.Millisecond
)

// podNames is what a pod's hosts file needs from its spec.
type podNames struct {
	namespace, hostname, subdomain string
	aliases                        []v1.HostAlias
}

// names is the kubelet's view of the pod's host name: spec.hostname, else
// the pod's name cut to a DNS label.
func (pr *podRT) names() podNames {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	host := pr.pod.Spec.Hostname
	if host == "" {
		host = strings.TrimRight(truncate(pr.pod.Name, 63), "-.")
	}
	return podNames{namespace: pr.pod.Namespace, hostname: host,
		subdomain: pr.pod.Spec.Subdomain, aliases: pr.pod.Spec.HostAliases}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// dnsPod is one pod whose /etc/netns files the watcher keeps fresh.
type dnsPod struct {
	podNames
	ip      string
	written []byte // the hosts file's content as last written
}

// serviceHosts is one Service as cluster DNS would answer for it.
type serviceHosts struct {
	namespace, name string
	addrs           []string
	// endpoints of a headless Service that have a hostname (a pod with
	// spec.hostname and spec.subdomain): hostname -> address.
	named map[string]string
}

type clusterDNS struct {
	factory  informers.SharedInformerFactory
	services corev1listers.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	synced   []cache.InformerSynced
	kick     chan struct{}

	mu   sync.Mutex // held while files are written, so a forgotten pod's directory stays gone
	pods map[string]*dnsPod
}

func newClusterDNS(client kubernetes.Interface) *clusterDNS {
	f := informers.NewSharedInformerFactory(client, 0)
	d := &clusterDNS{factory: f, kick: make(chan struct{}, 1), pods: map[string]*dnsPod{}}
	nudge := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { d.changed() },
		UpdateFunc: func(any, any) { d.changed() },
		DeleteFunc: func(any) { d.changed() },
	}
	svc, slices := f.Core().V1().Services(), f.Discovery().V1().EndpointSlices()
	for _, inf := range []cache.SharedIndexInformer{svc.Informer(), slices.Informer()} {
		inf.AddEventHandler(nudge)
		d.synced = append(d.synced, inf.HasSynced)
	}
	d.services, d.slices = svc.Lister(), slices.Lister()
	return d
}

func (d *clusterDNS) changed() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// run watches until ctx ends, rewriting every pod's hosts file after changes.
func (d *clusterDNS) run(ctx context.Context) {
	d.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), d.synced...) {
		return
	}
	logrus.Info("cluster DNS stand-in: watching Services and EndpointSlices")
	d.changed() // pods whose network was made before the caches filled
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		}
		if !sleepCtx(ctx, refreshDelay) {
			return
		}
		d.refresh()
	}
}

// add writes the pod's resolv.conf and hosts file, before its first
// container starts, and keeps the hosts file fresh from then on. A nil
// watcher (no cluster to watch) writes nothing.
func (d *clusterDNS) add(p *podNet, names podNames) error {
	if d == nil {
		return nil
	}
	dir := filepath.Join(netnsEtc, p.netns)
	err := os.MkdirAll(dir, 0o755)
	if errors.Is(err, fs.ErrNotExist) { // another agent removed an empty /etc/netns between the two mkdirs
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		return err
	}
	if err := writeInPlace(filepath.Join(dir, "resolv.conf"), resolvConf(names.namespace)); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	pod := &dnsPod{podNames: names, ip: p.ip}
	d.pods[p.netns] = pod
	return d.write(p.netns, pod, d.records())
}

// forget stops writing the pod's files; removePodEtc then deletes them.
func (d *clusterDNS) forget(netns string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	delete(d.pods, netns)
	d.mu.Unlock()
}

func (d *clusterDNS) refresh() {
	d.mu.Lock()
	defer d.mu.Unlock()
	recs := d.records()
	for netns, pod := range d.pods {
		if err := d.write(netns, pod, recs); err != nil {
			logrus.Warnf("cluster DNS stand-in: %v", err)
		}
	}
}

func (d *clusterDNS) write(netns string, pod *dnsPod, recs []serviceHosts) error {
	content := hostsFile(pod, recs)
	if bytes.Equal(content, pod.written) {
		return nil
	}
	if err := writeInPlace(filepath.Join(netnsEtc, netns, "hosts"), content); err != nil {
		return err
	}
	pod.written = content
	return nil
}

// writeInPlace truncates and rewrites path. Never a rename: the pod's running
// processes see the file through a bind mount of its inode, and a new inode
// would stay invisible to them.
func writeInPlace(path string, content []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(content)
	return errors.Join(err, f.Close())
}

// removePodEtc deletes the pod's /etc/netns directory, and /etc/netns itself
// once no pod of any agent has one. It needs only the namespace's name, which
// the pod's record under --state-dir holds, so `nodeagent cleanup` after a
// kill -9 removes it too.
func removePodEtc(netns string) {
	os.RemoveAll(filepath.Join(netnsEtc, netns))
	os.Remove(netnsEtc) // fails while another pod's directory is there
}

// records reads the caches into what each pod's hosts file lists, sorted so
// an unchanged cluster gives byte-identical files.
func (d *clusterDNS) records() []serviceHosts {
	svcs, err := d.services.List(labels.Everything())
	if err != nil {
		return nil
	}
	slices, err := d.slices.List(labels.Everything())
	if err != nil {
		return nil
	}
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range slices {
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
			bySvc[s.Namespace+"/"+name] = append(bySvc[s.Namespace+"/"+name], s)
		}
	}
	var recs []serviceHosts
	for _, svc := range svcs {
		if r, ok := serviceRecord(svc, bySvc[svc.Namespace+"/"+svc.Name]); ok {
			recs = append(recs, r)
		}
	}
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].namespace != recs[j].namespace {
			return recs[i].namespace < recs[j].namespace
		}
		return recs[i].name < recs[j].name
	})
	return recs
}

// serviceRecord answers as cluster DNS would, with one difference. A headless
// Service's name resolves to its ready endpoints, as in any cluster. A
// Service with a ClusterIP would resolve to that virtual IP, which only
// kube-proxy makes reachable, and nothing here runs kube-proxy: its name
// resolves to its first ready endpoint instead, a stand-in for kube-proxy's
// choice of backend. Its port must then equal the target port, since nothing
// translates one into the other. ExternalName Services are left out.
func serviceRecord(svc *v1.Service, slices []*discoveryv1.EndpointSlice) (serviceHosts, bool) {
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return serviceHosts{}, false
	}
	headless := svc.Spec.ClusterIP == v1.ClusterIPNone
	r := serviceHosts{namespace: svc.Namespace, name: svc.Name, named: map[string]string{}}
	seen := map[string]bool{}
	for _, s := range slices {
		if s.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		for _, ep := range s.Endpoints {
			// An unset ready condition means ready (the field's documentation).
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready || len(ep.Addresses) == 0 {
				continue
			}
			addr := ep.Addresses[0]
			if !seen[addr] {
				seen[addr] = true
				r.addrs = append(r.addrs, addr)
			}
			if headless && ep.Hostname != nil && *ep.Hostname != "" {
				r.named[*ep.Hostname] = addr
			}
		}
	}
	if len(r.addrs) == 0 {
		return serviceHosts{}, false
	}
	sort.Strings(r.addrs)
	if !headless {
		r.addrs, r.named = r.addrs[:1], nil
	}
	return r, true
}

// searchNames lists the names a pod in podNS reaches "<label>.<ns>.svc.
// cluster.local" by: nss_files never applies resolv.conf's search path, so
// each form the search path would complete is written out; the bare label
// only in the Service's own namespace, as the first search domain allows.
func searchNames(label, ns, podNS string) []string {
	base := label + "." + ns
	out := []string{base + ".svc." + clusterDomain, base + ".svc", base}
	if ns == podNS {
		out = append(out, label)
	}
	return out
}

// hostsFile is the kubelet's managed hosts file (managedHostsFileContent in
// pkg/kubelet/kubelet_pods.go), followed by the Services.
func hostsFile(pod *dnsPod, recs []serviceHosts) []byte {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file.\n")
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	b.WriteString("fe00::0\tip6-localnet\n")
	b.WriteString("fe00::0\tip6-mcastprefix\n")
	b.WriteString("fe00::1\tip6-allnodes\n")
	b.WriteString("fe00::2\tip6-allrouters\n")
	if pod.subdomain != "" {
		fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.%s\t%s\n", pod.ip, pod.hostname, pod.subdomain, pod.namespace, clusterDomain, pod.hostname)
	} else {
		fmt.Fprintf(&b, "%s\t%s\n", pod.ip, pod.hostname)
	}
	if len(pod.aliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range pod.aliases {
			fmt.Fprintf(&b, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
		}
	}
	// Processes here share the machine's UTS namespace: gethostname() is the
	// machine's name, and a pod's own host name resolves to the pod's address.
	if host, err := os.Hostname(); err == nil && host != pod.hostname {
		fmt.Fprintf(&b, "\n# The machine's host name, which the node agent's pods share.\n%s\t%s\n", pod.ip, host)
	}
	b.WriteString("\n# Services, written by the node agent in place of cluster DNS.\n")
	for _, r := range recs {
		names := strings.Join(searchNames(r.name, r.namespace, pod.namespace), " ")
		for _, a := range r.addrs {
			fmt.Fprintf(&b, "%s\t%s\n", a, names)
		}
		hosts := make([]string, 0, len(r.named))
		for h := range r.named {
			hosts = append(hosts, h)
		}
		sort.Strings(hosts)
		for _, h := range hosts {
			fmt.Fprintf(&b, "%s\t%s\n", r.named[h], strings.Join(searchNames(h+"."+r.name, r.namespace, pod.namespace), " "))
		}
	}
	return []byte(b.String())
}

// resolvConf is a kubelet's ClusterFirst resolv.conf, except that its
// nameserver is the pod's own loopback, where nothing listens: a name missing
// from the hosts file fails at once instead of waiting on a server that does
// not exist, and no query leaves the pod.
func resolvConf(ns string) []byte {
	return fmt.Appendf(nil, "search %s.svc.%s svc.%s %s\nnameserver 127.0.0.1\noptions ndots:5\n",
		ns, clusterDomain, clusterDomain, clusterDomain)
}
