// Wires the pieces together for `nodeagent run`: network, Kubernetes client,
// virtual-kubelet node + pod controllers, the kubelet API server, and an
// orderly shutdown that leaves nothing behind.
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	logruslogger "github.com/virtual-kubelet/virtual-kubelet/log/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
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
	nw, err := setupNetwork(cfg.stateDir)
	if err != nil {
		return err
	}
	logrus.Infof("pod network 198.18.%d.0/24 on bridge %s", nw.n, nw.bridge)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nw.dns = newClusterDNS(client)
	go nw.dns.run(ctx)

	var prov *provider
	mux := http.NewServeMux()
	n, err := nodeutil.NewNode(cfg.nodeName,
		func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
			prov = newProvider(cfg, nw, client)
			prov.secrets, prov.configMaps, prov.node = pc.Secrets, pc.ConfigMaps, pc.Node
			return prov, nil, nil
		},
		nodeutil.WithClient(client),
		func(c *nodeutil.NodeConfig) error {
			c.NodeSpec = nodeSpec(cfg)
			c.HTTPListenAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.port))
			c.Handler = withWebsocketPortForward(func() *provider { return prov }, mux)
			c.NumWorkers = 4
			// We resolve env ourselves: status.podIP is only known once the
			// namespace exists, after the library would have resolved it.
			c.SkipDownwardAPIResolution = true
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
		// No client certificates are requested: the API is bound to
		// loopback, and the test cluster's apiserver is its only client.
		nodeutil.WithTLSConfig(nodeutil.WithKeyPairFromPath(cfg.tlsCert, cfg.tlsKey),
			func(t *tls.Config) error { t.ClientAuth = tls.NoClientCert; return nil }),
	)
	if err != nil {
		nw.close()
		return err
	}
	runErr := make(chan error, 1)
	go func() { runErr <- n.Run(ctx) }()
	started := time.Now()
	select {
	case <-n.Ready():
		logrus.Infof("node %s ready after %s; kubelet API on 127.0.0.1:%d", cfg.nodeName, time.Since(started).Round(time.Millisecond), cfg.port)
		go untaintLoop(ctx, client, cfg.nodeName)
	case <-ctx.Done():
	case err := <-runErr:
		logrus.Errorf("node controller stopped: %v", err)
	}
	select {
	case <-ctx.Done():
	case err := <-runErr:
		if err != nil && ctx.Err() == nil {
			logrus.Errorf("node controller stopped: %v", err)
		}
	}
	logrus.Info("shutting down: stopping pods")
	cancel()
	if prov != nil {
		prov.shutdown()
	}
	nw.close()
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if err := client.CoreV1().Nodes().Delete(dctx, cfg.nodeName, metav1.DeleteOptions{}); err != nil {
		logrus.Warnf("deleting node %s: %v", cfg.nodeName, err)
	}
	logrus.Info("stopped")
	return nil
}

func nodeSpec(cfg agentConfig) v1.Node {
	res := v1.ResourceList{
		v1.ResourceCPU:              resource.MustParse("64"),
		v1.ResourceMemory:           resource.MustParse("256Gi"),
		v1.ResourcePods:             resource.MustParse("110"),
		v1.ResourceEphemeralStorage: resource.MustParse("1Ti"),
	}
	now := metav1.Now()
	cond := func(t v1.NodeConditionType, st v1.ConditionStatus, reason, msg string) v1.NodeCondition {
		return v1.NodeCondition{Type: t, Status: st, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: cfg.nodeName, Labels: map[string]string{
			"kubernetes.io/hostname": cfg.nodeName,
			"kubernetes.io/os":       "linux",
			"kubernetes.io/arch":     runtime.GOARCH,
			"type":                   "rayform-nodeagent",
		}},
		Status: v1.NodeStatus{
			Phase:           v1.NodeRunning,
			Capacity:        res,
			Allocatable:     res.DeepCopy(),
			Addresses:       []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.0.0.1"}},
			DaemonEndpoints: v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: int32(cfg.port)}},
			NodeInfo: v1.NodeSystemInfo{OperatingSystem: "linux", Architecture: runtime.GOARCH,
				KubeletVersion: "v1.37.1-nodeagent", ContainerRuntimeVersion: "nodeagent://0.1"},
			Conditions: []v1.NodeCondition{
				cond(v1.NodeReady, v1.ConditionTrue, "KubeletReady", "node agent is posting ready status"),
				cond(v1.NodeMemoryPressure, v1.ConditionFalse, "KubeletHasSufficientMemory", ""),
				cond(v1.NodeDiskPressure, v1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
				cond(v1.NodePIDPressure, v1.ConditionFalse, "KubeletHasSufficientPID", ""),
			},
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

func untaint(ctx context.Context, client kubernetes.Interface, name string) error {
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
	if _, err := client.CoreV1().Nodes().Update(ctx, nd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update node: %w", err)
	}
	logrus.Infof("removed not-ready/unreachable taints from node %s", name)
	return nil
}
