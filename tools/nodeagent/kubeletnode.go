// One Node this process is the kubelet of: a provider with its own pods,
// virtual-kubelet's node and pod controllers, and a kubelet API on a loopback
// port of its own. The agent's own node is one; every Node it serves for
// Karpenter (served.go) is another, with the same pod network.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
)

// nodeDeps is what every node of the process shares.
type nodeDeps struct {
	cfg    agentConfig
	nw     *network
	client kubernetes.Interface
	tls    *tls.Config
}

type kubeletNode struct {
	name     string
	port     int
	prov     *provider
	vk       *nodeutil.Node
	listener net.Listener
	srv      *http.Server
	client   kubernetes.Interface
}

// kubeletTLS is the kubelet API's server config. No client certificates are
// requested: the API is bound to loopback, and the test cluster's apiserver is
// its only client.
func kubeletTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: nodeutil.DefaultServerCiphers(),
		ClientAuth: tls.NoClientCert, Certificates: []tls.Certificate{cert}}, nil
}

// newKubeletNode listens before it builds the node: the port goes into the
// node's status (daemonEndpoints), which the node controller writes first
// thing. port 0 takes any free one. spec builds the status this kubelet
// reports; limits is the Node whose allocatable backs resourceFieldRef
// limits that are unset (nil: the spec's).
func newKubeletNode(d nodeDeps, name string, port int, spec func(port int) v1.Node, limits *v1.Node) (*kubeletNode, error) {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("kubelet API of node %s: %w", name, err)
	}
	k := &kubeletNode{name: name, port: l.Addr().(*net.TCPAddr).Port, client: d.client}
	k.listener = tls.NewListener(l, d.tls)
	pcfg := d.cfg
	pcfg.nodeName = name
	mux := http.NewServeMux()
	k.vk, err = nodeutil.NewNode(name,
		func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
			k.prov = newProvider(pcfg, d.nw, d.client)
			k.prov.secrets, k.prov.configMaps, k.prov.node = pc.Secrets, pc.ConfigMaps, pc.Node
			if limits != nil {
				k.prov.node = limits
			}
			return k.prov, nil, nil
		},
		nodeutil.WithClient(d.client),
		func(c *nodeutil.NodeConfig) error {
			c.NodeSpec = spec(k.port)
			c.NumWorkers = 4
			// We resolve env ourselves: status.podIP is only known once the
			// namespace exists, after the library would have resolved it.
			c.SkipDownwardAPIResolution = true
			// nodeutil would listen itself, on a port it cannot tell us
			// before the node is written; a TLS config without a handler
			// makes it leave serving to us.
			c.TLSConfig, c.Handler = d.tls, nil
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
	)
	if err != nil {
		l.Close()
		return nil, err
	}
	k.srv = &http.Server{Handler: withWebsocketPortForward(func() *provider { return k.prov }, mux),
		ReadHeaderTimeout: 30 * time.Second}
	return k, nil
}

// run serves the node until ctx ends or its controllers fail, then stops its
// pods without reporting (the cluster is going away, or the Node is gone).
// The Node object is left as it is.
func (k *kubeletNode) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go k.srv.Serve(k.listener)
	go k.vk.Run(ctx)
	started := time.Now()
	select {
	case <-k.vk.Ready():
		logrus.Infof("node %s ready after %s; kubelet API on 127.0.0.1:%d", k.name, time.Since(started).Round(time.Millisecond), k.port)
		go untaintLoop(ctx, k.client, k.name)
	case <-k.vk.Done():
	}
	<-k.vk.Done()
	k.srv.Close()
	k.prov.shutdown()
	if err := k.vk.Err(); err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("node %s: %w", k.name, err)
	}
	return nil
}
