// Wires the pieces together for `nodeagent run`: network, Kubernetes client,
// the agent's own node and, with --serve-provider-id-prefix, the nodes it
// serves for Karpenter (each a kubeletNode), and an orderly shutdown that
// leaves nothing behind.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	logruslogger "github.com/virtual-kubelet/virtual-kubelet/log/logrus"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
)

func runAgent(cfg agentConfig) error {
	logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	log.L = logruslogger.FromLogrus(logrus.NewEntry(logrus.StandardLogger()))
	if err := os.MkdirAll(cfg.stateDir, 0o755); err != nil {
		return err
	}
	// A previous agent on this state dir may have been killed; its pods'
	// processes and namespaces are still around.
	if err := cleanupState(cfg.stateDir); err != nil {
		return err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	tlsCfg, err := kubeletTLS(cfg.tlsCert, cfg.tlsKey)
	if err != nil {
		return err
	}
	nw, err := setupNetwork(cfg.stateDir)
	if err != nil {
		return err
	}
	defer nw.close()
	logrus.Infof("pod network 198.18.%d.0/24 on bridge %s", nw.n, nw.bridge)
	d := nodeDeps{cfg: cfg, nw: nw, client: client, tls: tlsCfg}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nw.dns = newClusterDNS(client)
	go nw.dns.run(ctx)

	own, err := newKubeletNode(d, cfg.nodeName, cfg.port, func(port int) v1.Node { return nodeSpec(cfg, port) }, nil)
	if err != nil {
		return err
	}
	ownDone := make(chan error, 1)
	go func() { ownDone <- own.run(ctx) }()
	servedDone := make(chan struct{})
	if cfg.serveProviderIDPrefix != "" {
		served := newServedNodes(d, cfg.serveProviderIDPrefix)
		go func() { served.run(ctx); close(servedDone) }()
	} else {
		close(servedDone)
	}

	var ownErr error
	select {
	case <-ctx.Done():
		logrus.Info("shutting down: stopping pods")
		cancel()
		ownErr = <-ownDone
	case ownErr = <-ownDone:
		cancel()
	}
	if ownErr != nil {
		logrus.Errorf("node controller stopped: %v", ownErr)
	}
	<-servedDone
	// Only our own node: the nodes we served belong to whoever created them.
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if err := client.CoreV1().Nodes().Delete(dctx, cfg.nodeName, metav1.DeleteOptions{}); err != nil {
		logrus.Warnf("deleting node %s: %v", cfg.nodeName, err)
	}
	logrus.Info("stopped")
	return nil
}

// nodeSpec is the agent's own node, which it registers: a machine big
// enough for the tests' pods, with no GPU.
func nodeSpec(cfg agentConfig, port int) v1.Node {
	res := v1.ResourceList{
		v1.ResourceCPU:              resource.MustParse("64"),
		v1.ResourceMemory:           resource.MustParse("256Gi"),
		v1.ResourcePods:             resource.MustParse("110"),
		v1.ResourceEphemeralStorage: resource.MustParse("1Ti"),
	}
	st := kubeletStatus(port)
	st.Capacity, st.Allocatable = res, res.DeepCopy()
	return v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.nodeName, Labels: map[string]string{
			"kubernetes.io/hostname": cfg.nodeName,
			"kubernetes.io/os":       "linux",
			"kubernetes.io/arch":     runtime.GOARCH,
			"type":                   "rayform-nodeagent",
		}},
		Status: st,
	}
}

// kubeletStatus is what any kubelet of ours reports about its node: Ready,
// where its kubelet API listens, and what runs its pods.
func kubeletStatus(port int) v1.NodeStatus {
	now := metav1.Now()
	cond := func(t v1.NodeConditionType, st v1.ConditionStatus, reason, msg string) v1.NodeCondition {
		return v1.NodeCondition{Type: t, Status: st, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return v1.NodeStatus{
		Phase:           v1.NodeRunning,
		Addresses:       []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.0.0.1"}},
		DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: int32(port)}},
		NodeInfo: v1.NodeSystemInfo{OperatingSystem: "linux", Architecture: runtime.GOARCH,
			KubeletVersion: "v1.37.1-nodeagent", ContainerRuntimeVersion: "nodeagent://0.1"},
		Conditions: []v1.NodeCondition{
			cond(v1.NodeReady, v1.ConditionTrue, "KubeletReady", "node agent is posting ready status"),
			cond(v1.NodeMemoryPressure, v1.ConditionFalse, "KubeletHasSufficientMemory", ""),
			cond(v1.NodeDiskPressure, v1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
			cond(v1.NodePIDPressure, v1.ConditionFalse, "KubeletHasSufficientPID", ""),
		},
	}
}

// untaintLoop does the node-lifecycle controller's job for our node, which
// the test cluster runs without: admission taints every new Node not-ready,
// and only that controller would lift the taint once the node is Ready.
func untaintLoop(ctx context.Context, client kubernetes.Interface, name string) {
	for {
		if err := untaint(ctx, client, name); err != nil && ctx.Err() == nil {
			logrus.Warnf("removing not-ready taints: %v", err)
		}
		if !sleepCtx(ctx, 5*time.Second) {
			return
		}
	}
}

// untaint removes only the node-lifecycle taints: the rest (Karpenter's
// among them) belong to whoever put them there. A Node being deleted is the
// caller's to notice, not an error.
func untaint(ctx context.Context, client kubernetes.Interface, name string) error {
	removed := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		nd, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var keep []v1.Taint
		for _, t := range nd.Spec.Taints {
			if t.Key != v1.TaintNodeNotReady && t.Key != v1.TaintNodeUnreachable {
				keep = append(keep, t)
			}
		}
		if len(keep) == len(nd.Spec.Taints) {
			return nil
		}
		nd.Spec.Taints = keep
		_, err = client.CoreV1().Nodes().Update(ctx, nd, metav1.UpdateOptions{})
		removed = err == nil
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("update node: %w", err)
	}
	if removed {
		logrus.Infof("removed not-ready/unreachable taints from node %s", name)
	}
	return nil
}
