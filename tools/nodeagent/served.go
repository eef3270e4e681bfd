// Nodes another program creates for the agent to be the kubelet of.
// Karpenter's kwok cloud provider launches its "instances" as bare Node
// objects (providerID kwok://NAME, Karpenter's labels, taints, capacity and
// finalizer) and waits for a kubelet to make them Ready. Each such Node gets a
// kubeletNode of its own for as long as it exists; what Karpenter wrote stays
// Karpenter's, and a Node it deletes stays deleted.
package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
)

type servedNodes struct {
	d      nodeDeps
	prefix string

	mu    sync.Mutex
	nodes map[string]*servedNode // by node name
	wg    sync.WaitGroup
}

type servedNode struct {
	node    *v1.Node // as first seen
	cancel  context.CancelFunc
	deleted bool // guarded by servedNodes.mu
}

func newServedNodes(d nodeDeps, providerIDPrefix string) *servedNodes {
	// virtual-kubelet registers a Node it finds missing; these are not ours to create.
	d.client = noNodeCreate{d.client}
	return &servedNodes{d: d, prefix: providerIDPrefix, nodes: map[string]*servedNode{}}
}

// run serves matching Nodes until ctx ends, then returns once every one of
// them has stopped its pods.
func (s *servedNodes) run(ctx context.Context) {
	// The resync gives a node whose controllers failed another start.
	f := informers.NewSharedInformerFactory(s.d.client, time.Minute)
	inf := f.Core().V1().Nodes().Informer()
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.saw(ctx, o) },
		UpdateFunc: func(_, o any) { s.saw(ctx, o) },
		DeleteFunc: s.gone,
	})
	logrus.Infof("serving every Node whose providerID starts with %q", s.prefix)
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown() // no handler runs after this: wg can be waited on
	s.wg.Wait()
}

func (s *servedNodes) saw(ctx context.Context, o any) {
	nd, ok := o.(*v1.Node)
	if !ok || !strings.HasPrefix(nd.Spec.ProviderID, s.prefix) || nd.Name == s.d.cfg.nodeName {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	if cur := s.nodes[nd.Name]; cur != nil {
		if cur.node.UID == nd.UID {
			return
		}
		cur.cancel() // deleted and created again under the same name
	}
	sctx, cancel := context.WithCancel(ctx)
	sn := &servedNode{node: nd.DeepCopy(), cancel: cancel}
	s.nodes[nd.Name] = sn
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serve(sctx, sn)
		cancel()
		s.mu.Lock()
		if s.nodes[nd.Name] == sn {
			delete(s.nodes, nd.Name)
		}
		deleted := sn.deleted
		s.mu.Unlock()
		if deleted {
			s.dropLease(sn.node)
		}
	}()
}

func (s *servedNodes) gone(o any) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	nd, ok := o.(*v1.Node)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.nodes[nd.Name]; cur != nil && cur.node.UID == nd.UID {
		logrus.Infof("node %s was deleted: stopping serving it", nd.Name)
		cur.deleted = true
		cur.cancel()
		delete(s.nodes, nd.Name)
	}
}

func (s *servedNodes) serve(ctx context.Context, sn *servedNode) {
	name := sn.node.Name
	spec := func(port int) v1.Node { return servedNodeSpec(name, port) }
	k, err := newKubeletNode(s.d, name, 0, spec, sn.node)
	if err != nil {
		logrus.Errorf("cannot serve node %s: %v", name, err)
		return
	}
	logrus.Infof("serving node %s (providerID %s)", name, sn.node.Spec.ProviderID)
	if err := k.run(ctx); err != nil {
		logrus.Errorf("stopped serving node %s: %v", name, err)
		return
	}
	logrus.Infof("stopped serving node %s", name)
}

// dropLease removes a deleted node's Lease at once. The garbage collector
// would too (the Lease names the Node as its owner), but only where a
// controller-manager runs.
func (s *servedNodes) dropLease(nd *v1.Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.d.client.CoordinationV1().Leases(v1.NamespaceNodeLease).Delete(ctx, nd.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		logrus.Warnf("deleting the lease of node %s: %v", nd.Name, err)
	}
}

// servedNodeSpec is what the kubelet of a Node it did not create reports.
// No labels and no capacity: virtual-kubelet patches only what is given here,
// so Karpenter's stay as Karpenter wrote them.
func servedNodeSpec(name string, port int) v1.Node {
	return v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: kubeletStatus(port)}
}

// noNodeCreate refuses to create Nodes and passes everything else through.
type noNodeCreate struct{ kubernetes.Interface }

func (c noNodeCreate) CoreV1() corev1client.CoreV1Interface {
	return noNodeCreateCore{c.Interface.CoreV1()}
}

type noNodeCreateCore struct{ corev1client.CoreV1Interface }

func (c noNodeCreateCore) Nodes() corev1client.NodeInterface {
	return noNodeCreateNodes{c.CoreV1Interface.Nodes()}
}

type noNodeCreateNodes struct{ corev1client.NodeInterface }

func (noNodeCreateNodes) Create(_ context.Context, nd *v1.Node, _ metav1.CreateOptions) (*v1.Node, error) {
	return nil, fmt.Errorf("node %s is gone, and the node agent does not create the nodes it serves", nd.Name)
}
