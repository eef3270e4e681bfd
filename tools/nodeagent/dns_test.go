package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func service(name, clusterIP string) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ray", Name: name},
		Spec: v1.ServiceSpec{ClusterIP: clusterIP}}
}

func endpoint(addr string, ready *bool, hostname string) discoveryv1.Endpoint {
	ep := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	if hostname != "" {
		ep.Hostname = &hostname
	}
	return ep
}

func slice(eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: eps}
}

var yes, no = true, false

func TestHeadlessServiceResolvesToEveryReadyEndpoint(t *testing.T) {
	r, ok := serviceRecord(service("head-svc", v1.ClusterIPNone), []*discoveryv1.EndpointSlice{
		slice(endpoint("198.18.0.9", &yes, "head"), endpoint("198.18.0.3", &no, "")),
		slice(endpoint("198.18.0.4", nil, "")), // unset means ready
	})
	if !ok {
		t.Fatal("a headless Service with ready endpoints got no record")
	}
	if got := strings.Join(r.addrs, " "); got != "198.18.0.4 198.18.0.9" {
		t.Errorf("addresses %q, want the two ready ones, sorted", got)
	}
	if r.named["head"] != "198.18.0.9" {
		t.Errorf("endpoint hostnames %v, want head -> 198.18.0.9", r.named)
	}
}

func TestClusterIPServiceResolvesToOneReadyEndpoint(t *testing.T) {
	r, ok := serviceRecord(service("serve-svc", "10.0.0.7"), []*discoveryv1.EndpointSlice{
		slice(endpoint("198.18.0.8", &yes, ""), endpoint("198.18.0.5", &no, ""), endpoint("198.18.0.6", &yes, "")),
	})
	if !ok || strings.Join(r.addrs, " ") != "198.18.0.6" {
		t.Errorf("got %v (%v), want only the first ready endpoint 198.18.0.6, never the virtual IP", r.addrs, ok)
	}
}

func TestServicesWithoutAnAddressAreLeftOut(t *testing.T) {
	if _, ok := serviceRecord(service("idle", v1.ClusterIPNone), []*discoveryv1.EndpointSlice{slice(endpoint("198.18.0.2", &no, ""))}); ok {
		t.Error("a Service with no ready endpoint got a record")
	}
	ext := service("db", "")
	ext.Spec.Type, ext.Spec.ExternalName = v1.ServiceTypeExternalName, "db.example.com"
	if _, ok := serviceRecord(ext, nil); ok {
		t.Error("an ExternalName Service got a record")
	}
}

func TestHostsFileNamesServicesAsTheSearchPathWould(t *testing.T) {
	recs := []serviceHosts{{namespace: "ray", name: "head-svc", addrs: []string{"198.18.0.9"}, named: map[string]string{"h": "198.18.0.9"}}}
	for _, tc := range []struct {
		podNS string
		want  []string
		not   []string
	}{
		{"ray", []string{
			"198.18.0.9\thead-svc.ray.svc.cluster.local head-svc.ray.svc head-svc.ray head-svc\n",
			"198.18.0.9\th.head-svc.ray.svc.cluster.local h.head-svc.ray.svc h.head-svc.ray h.head-svc\n",
		}, nil},
		{"other", []string{"198.18.0.9\thead-svc.ray.svc.cluster.local head-svc.ray.svc head-svc.ray\n"},
			[]string{" head-svc\n", " h.head-svc\n"}},
	} {
		got := string(hostsFile(&dnsPod{podNames: podNames{namespace: tc.podNS, hostname: "worker-0"}, ip: "198.18.0.10"}, recs))
		for _, w := range append(tc.want, "127.0.0.1\tlocalhost\n", "198.18.0.10\tworker-0\n") {
			if !strings.Contains(got, w) {
				t.Errorf("pod in %s: hosts file lacks %q:\n%s", tc.podNS, w, got)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("pod in %s: hosts file has the short name %q of another namespace:\n%s", tc.podNS, n, got)
			}
		}
	}
}

func TestHostsFileWritesThePodLineAsAKubeletDoes(t *testing.T) {
	pod := &dnsPod{podNames: podNames{namespace: "ray", hostname: "w", subdomain: "grp",
		aliases: []v1.HostAlias{{IP: "198.18.0.1", Hostnames: []string{"a", "b"}}}}, ip: "198.18.0.10"}
	got := string(hostsFile(pod, nil))
	for _, w := range []string{"# Kubernetes-managed hosts file.\n", "198.18.0.10\tw.grp.ray.svc.cluster.local\tw\n",
		"# Entries added by HostAliases.\n198.18.0.1\ta\tb\n"} {
		if !strings.Contains(got, w) {
			t.Errorf("hosts file lacks %q:\n%s", w, got)
		}
	}
}

func TestHostsFileIsRewrittenInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts")
	if err := writeInPlace(path, []byte("198.18.0.2\told-and-longer\n")); err != nil {
		t.Fatal(err)
	}
	before := inode(t, path)
	if err := writeInPlace(path, []byte("198.18.0.3\tnew\n")); err != nil {
		t.Fatal(err)
	}
	if inode(t, path) != before {
		t.Error("the rewrite made a new inode: a pod's bind mount would keep showing the old file")
	}
	if b, _ := os.ReadFile(path); string(b) != "198.18.0.3\tnew\n" {
		t.Errorf("content %q, want only the new file", b)
	}
}

func inode(t *testing.T, path string) uint64 {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}
