// The websocket flavour of port-forward. The API server passes a websocket
// port-forward (`v4.channel.k8s.io`, what kube-rs and other non-Go clients
// speak) through to the node unchanged, and virtual-kubelet v1.14.1 answers it
// with no ports at all: it hands the streaming library empty options, so the
// client's bytes have no channel to go to and every connection closes before
// a reply. SPDY requests (kubectl) still go to virtual-kubelet's handler.
package main

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
)

// withWebsocketPortForward routes websocket port-forwards to the provider and
// everything else to next.
func withWebsocketPortForward(p func() *provider, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ns, pod, ok := portForwardTarget(req.URL.Path)
		if !ok || !wsstream.IsWebSocketRequest(req) || p() == nil {
			next.ServeHTTP(w, req)
			return
		}
		p().serveWebsocketPortForward(w, req, ns, pod)
	})
}

// portForwardTarget parses the kubelet path /portForward/{namespace}/{pod}.
func portForwardTarget(path string) (ns, pod string, ok bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) != 3 || parts[0] != "portForward" || parts[1] == "" || parts[2] == "" {
		return "", "", false
	}
	return parts[1], parts[2], true
}

// requestedPorts reads the ports the API server passes on: the client's
// `ports` become `port` parameters (repeated or comma-separated).
func requestedPorts(req *http.Request) ([]int32, error) {
	var ports []int32
	for _, value := range req.URL.Query()[v1.PortHeader] {
		for s := range strings.SplitSeq(value, ",") {
			n, err := strconv.ParseUint(s, 10, 16)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("ports: %q is not a port number", s)
			}
			ports = append(ports, int32(n))
		}
	}
	if len(ports) == 0 {
		return nil, fmt.Errorf("the query parameter %q is required", v1.PortHeader)
	}
	return ports, nil
}

// serveWebsocketPortForward gives each port a data channel and an error
// channel (2i and 2i+1), announces the port on both as the protocol wants,
// and copies the data channel to the pod's port until either side closes.
func (p *provider) serveWebsocketPortForward(w http.ResponseWriter, req *http.Request, ns, pod string) {
	ports, err := requestedPorts(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	channels := make([]wsstream.ChannelType, 0, 2*len(ports))
	for range ports {
		channels = append(channels, wsstream.ReadWriteChannel, wsstream.WriteChannel)
	}
	conn := wsstream.NewConn(map[string]wsstream.ChannelProtocolConfig{
		"":                         {Binary: true, Channels: channels},
		"v4.channel.k8s.io":        {Binary: true, Channels: channels},
		"v4.base64.channel.k8s.io": {Binary: false, Channels: channels},
	})
	_, streams, err := conn.Open(w, req)
	if err != nil {
		logrus.Warnf("port-forward to %s/%s: websocket upgrade failed: %v", ns, pod, err)
		return
	}
	defer conn.Close()
	var wg sync.WaitGroup
	for i, port := range ports {
		data, errs := streams[2*i], streams[2*i+1]
		announce := binary.LittleEndian.AppendUint16(nil, uint16(port))
		if _, err := data.Write(announce); err != nil {
			return
		}
		if _, err := errs.Write(announce); err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.PortForward(req.Context(), ns, pod, port, data); err != nil {
				fmt.Fprintf(errs, "forwarding port %d of pod %s/%s: %v", port, ns, pod, err)
			}
		}()
	}
	wg.Wait()
}
