// Container environment with kubelet semantics: base PATH/HOME, --env extras,
// envFrom, then env (value with $(VAR) expansion, secret/configMap keys,
// downward API fields and resources). Values are never logged: they may be
// secrets.
package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
)

const basePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// envList keeps first-definition order while later definitions win.
type envList struct {
	keys []string
	vals map[string]string
}

func (e *envList) set(k, v string) {
	if _, ok := e.vals[k]; !ok {
		e.keys = append(e.keys, k)
	}
	e.vals[k] = v
}

func (e *envList) lookup(k string) (string, bool) { v, ok := e.vals[k]; return v, ok }

func (e *envList) strings() []string {
	out := make([]string, 0, len(e.keys))
	for _, k := range e.keys {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// expand implements the kubelet's $(VAR) syntax: $$ escapes, unknown
// references stay as written.
func expand(s string, lookup func(string) (string, bool)) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if j := strings.IndexByte(s[i+2:], ')'); j >= 0 {
				name := s[i+2 : i+2+j]
				if v, ok := lookup(name); ok {
					b.WriteString(v)
				} else {
					b.WriteString(s[i : i+3+j])
				}
				i += 2 + j
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// containerEnv returns the environment and the expanded argv of c.
func (p *provider) containerEnv(pr *podRT, c *v1.Container, binDir string) ([]string, []string, error) {
	pr.mu.Lock()
	pod := pr.pod.DeepCopy()
	podIP := ""
	if pr.net != nil {
		podIP = pr.net.ip
	}
	pr.mu.Unlock()
	e := &envList{vals: map[string]string{}}
	e.set("PATH", binDir+":"+basePath)
	e.set("HOME", filepath.Join(pr.dir, "home", c.Name))
	e.set("HOSTNAME", pod.Name)
	if pr.net != nil {
		tmp := podTmp(pr.net.netns)
		if err := os.MkdirAll(tmp, 0o1777); err != nil {
			return nil, nil, err
		}
		e.set("TMPDIR", tmp)
	}
	for _, kv := range p.cfg.extraEnv {
		k, v, _ := strings.Cut(kv, "=")
		e.set(k, v)
	}
	for _, src := range c.EnvFrom {
		data, err := p.envFromData(pod.Namespace, src)
		if err != nil {
			return nil, nil, err
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			e.set(src.Prefix+k, data[k])
		}
	}
	for _, ev := range c.Env {
		if ev.ValueFrom == nil {
			e.set(ev.Name, expand(ev.Value, e.lookup))
			continue
		}
		v, skip, err := p.valueFrom(pod, c, podIP, ev.ValueFrom)
		if err != nil {
			return nil, nil, fmt.Errorf("env %s: %w", ev.Name, err)
		}
		if !skip {
			e.set(ev.Name, v)
		}
	}
	var argv []string
	for _, a := range append(append([]string{}, c.Command...), c.Args...) {
		argv = append(argv, expand(a, e.lookup))
	}
	return e.strings(), argv, nil
}

func (p *provider) envFromData(ns string, src v1.EnvFromSource) (map[string]string, error) {
	out := map[string]string{}
	switch {
	case src.ConfigMapRef != nil:
		cm, err := p.getConfigMap(ns, src.ConfigMapRef.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && src.ConfigMapRef.Optional != nil && *src.ConfigMapRef.Optional {
				return out, nil
			}
			return nil, fmt.Errorf("configmap %q: %w", src.ConfigMapRef.Name, err)
		}
		for k, v := range cm.Data {
			out[k] = v
		}
	case src.SecretRef != nil:
		s, err := p.getSecret(ns, src.SecretRef.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && src.SecretRef.Optional != nil && *src.SecretRef.Optional {
				return out, nil
			}
			return nil, fmt.Errorf("secret %q: %w", src.SecretRef.Name, err)
		}
		for k, v := range s.Data {
			out[k] = string(v)
		}
	}
	return out, nil
}

// valueFrom resolves one env source; skip means an optional source was absent.
func (p *provider) valueFrom(pod *v1.Pod, c *v1.Container, podIP string, src *v1.EnvVarSource) (string, bool, error) {
	optional := func(o *bool) bool { return o != nil && *o }
	switch {
	case src.SecretKeyRef != nil:
		r := src.SecretKeyRef
		s, err := p.getSecret(pod.Namespace, r.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && optional(r.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %q: %w", r.Name, err)
		}
		v, ok := s.Data[r.Key]
		if !ok {
			if optional(r.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %q has no key %q", r.Name, r.Key)
		}
		return string(v), false, nil
	case src.ConfigMapKeyRef != nil:
		r := src.ConfigMapKeyRef
		cm, err := p.getConfigMap(pod.Namespace, r.Name)
		if err != nil {
			if apierrors.IsNotFound(err) && optional(r.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("configmap %q: %w", r.Name, err)
		}
		if v, ok := cm.Data[r.Key]; ok {
			return v, false, nil
		}
		if v, ok := cm.BinaryData[r.Key]; ok {
			return string(v), false, nil
		}
		if optional(r.Optional) {
			return "", true, nil
		}
		return "", false, fmt.Errorf("configmap %q has no key %q", r.Name, r.Key)
	case src.FieldRef != nil:
		v, err := podField(pod, podIP, src.FieldRef.FieldPath)
		return v, false, err
	case src.ResourceFieldRef != nil:
		v, err := p.resourceValue(pod, c, src.ResourceFieldRef)
		return v, false, err
	}
	return "", false, fmt.Errorf("unsupported valueFrom")
}

var metaKeyRE = regexp.MustCompile(`^metadata\.(labels|annotations)\['(.*)'\]$`)

func podField(pod *v1.Pod, podIP, path string) (string, error) {
	if m := metaKeyRE.FindStringSubmatch(path); m != nil {
		if m[1] == "labels" {
			return pod.Labels[m[2]], nil
		}
		return pod.Annotations[m[2]], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	case "status.hostIP", "status.hostIPs":
		return "127.0.0.1", nil
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var lines []string
	for _, k := range keys {
		lines = append(lines, fmt.Sprintf("%s=%q", k, m[k]))
	}
	return strings.Join(lines, "\n")
}

// resourceValue follows the kubelet: unset limits fall back to the node's
// allocatable, values are rounded up to whole divisors.
func (p *provider) resourceValue(pod *v1.Pod, c *v1.Container, ref *v1.ResourceFieldSelector) (string, error) {
	target := c
	if ref.ContainerName != "" && ref.ContainerName != c.Name {
		target = nil
		for _, cs := range [][]v1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
			for i := range cs {
				if cs[i].Name == ref.ContainerName {
					target = &cs[i]
				}
			}
		}
		if target == nil {
			return "", fmt.Errorf("resourceFieldRef: no container %q", ref.ContainerName)
		}
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return "", fmt.Errorf("unsupported resourceFieldRef %q", ref.Resource)
	}
	rn := v1.ResourceName(name)
	var q resource.Quantity
	if kind == "limits" {
		if v, ok := target.Resources.Limits[rn]; ok {
			q = v
		} else if v, ok := p.node.Status.Allocatable[rn]; ok {
			q = v
		}
	} else if v, ok := target.Resources.Requests[rn]; ok {
		q = v
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	if rn == v1.ResourceCPU {
		return fmt.Sprint(int64(math.Ceil(float64(q.MilliValue()) / float64(divisor.MilliValue())))), nil
	}
	return fmt.Sprint(int64(math.Ceil(float64(q.Value()) / float64(divisor.Value())))), nil
}
