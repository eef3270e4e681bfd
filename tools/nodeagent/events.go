// Events on pods, written as the kubelet writes them (source component
// "kubelet", host the node), so `kubectl describe pod` reads as on a real
// node. virtual-kubelet's own recorder signs as "<node>/pod-controller".
package main

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// newKubeletEvents starts a broadcaster to the API server; its correlator
// folds repeats (a back-off's events) into counts, as the kubelet's does.
func newKubeletEvents(client kubernetes.Interface, nodeName string) (record.EventBroadcaster, record.EventRecorder) {
	eb := record.NewBroadcaster()
	eb.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: client.CoreV1().Events(v1.NamespaceAll)})
	return eb, eb.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kubelet", Host: nodeName})
}
