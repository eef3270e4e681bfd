// Image pulls that take time, as a node sees them: nothing is downloaded (an
// image is a local bin dir, images.go), but a pull lasts the image's size
// divided by the node's pull rate, so what users watch a real node do — a Ray
// pod Pending in ContainerCreating for minutes behind an 11 GB image, a second
// pod on the same node starting at once — happens here too. Each provider
// (one per Node) has its own store: the cache is the node's, not the process's.
package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// pullConfig is how long pulls take on every node the agent serves.
//
// Sizes are keyed by a prefix of the image *reference* (repository and tag),
// longest prefix winning, rather than by repository alone: that is what lets a
// test make one image take a minute on a cluster it shares with other tests. It
// uses a tag the cluster gives a large size (scripts/testcluster documents
// `rayproject/ray-llm:slow-pull…`) and a tag of its own after that prefix, so
// its pull is never in another test's cache nor anyone else's slow image. A
// ConfigMap the agent watched would do the same at the price of cluster-wide
// state every test could change under the others.
type pullConfig struct {
	bytesPerSec float64 // 0: pulls are instant
	sizes       []sizeRule
	defaultSize int64
	// backoff is the kubelet's image back-off base (10 s there), doubled after
	// each failed pull up to 30 times the base (300 s there). It is also how
	// often a pod whose pull failed is looked at again, as the kubelet's pod
	// sync retries a failed pod after 10 s.
	backoff time.Duration
}

type sizeRule struct {
	prefix string
	bytes  int64
}

const defaultPullBackoff = 10 * time.Second

func (c pullConfig) maxBackoff() time.Duration { return 30 * c.backoff }

// sizeOf is the configured size of a normalized reference.
func (c pullConfig) sizeOf(ref string) int64 {
	size, best := c.defaultSize, -1
	for _, r := range c.sizes {
		if strings.HasPrefix(ref, r.prefix) && len(r.prefix) > best {
			size, best = r.bytes, len(r.prefix)
		}
	}
	return size
}

func (c pullConfig) pullTime(size int64) time.Duration {
	if c.bytesPerSec <= 0 {
		return 0
	}
	return time.Duration(float64(size) / c.bytesPerSec * float64(time.Second))
}

// parsePullFlags reads `nodeagent run`'s --pull-rate, --default-image-size,
// --image-size and --pull-backoff.
func parsePullFlags(rate, defaultSize string, sizes []string, backoff time.Duration) (pullConfig, error) {
	var cfg pullConfig
	var err error
	if cfg.bytesPerSec, err = parseRate(rate); err != nil {
		return cfg, err
	}
	size, err := parseBytes(defaultSize)
	if err != nil {
		return cfg, fmt.Errorf("--default-image-size: %w", err)
	}
	cfg.defaultSize = int64(size)
	for _, s := range sizes {
		rule, err := parseSizeRule(s)
		if err != nil {
			return cfg, err
		}
		cfg.sizes = append(cfg.sizes, rule)
	}
	if backoff <= 0 {
		return cfg, fmt.Errorf("--pull-backoff %s: want a positive duration", backoff)
	}
	cfg.backoff = backoff
	return cfg, nil
}

// byteUnits: decimal as registries and `docker images` print sizes, binary as
// Kubernetes quantities are often written.
var byteUnits = map[string]float64{
	"": 1, "B": 1,
	"K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
	"Ki": 1 << 10, "KiB": 1 << 10, "Mi": 1 << 20, "MiB": 1 << 20, "Gi": 1 << 30, "GiB": 1 << 30, "Ti": 1 << 40, "TiB": 1 << 40,
}

// parseBytes reads "11GB", "1.5G", "300MiB" or a plain byte count.
func parseBytes(s string) (float64, error) {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	n, err := strconv.ParseFloat(s[:i], 64)
	unit, ok := byteUnits[strings.TrimSpace(s[i:])]
	if err != nil || !ok || n < 0 {
		return 0, fmt.Errorf("%q is not a size (want e.g. 11GB, 1.5Gi, 300MB)", s)
	}
	return n * unit, nil
}

// parseRate reads "2GB/s" (the "/s" may be left out); "0" means instant.
func parseRate(s string) (float64, error) {
	r, err := parseBytes(strings.TrimSuffix(s, "/s"))
	if err != nil {
		return 0, fmt.Errorf("--pull-rate %q: want a size per second, e.g. 2GB/s (0: instant)", s)
	}
	return r, nil
}

func parseSizeRule(s string) (sizeRule, error) {
	prefix, size, ok := strings.Cut(s, "=")
	n, err := parseBytes(size)
	if !ok || prefix == "" || err != nil {
		return sizeRule{}, fmt.Errorf("--image-size %q: want PREFIX=SIZE, e.g. rayproject/ray-llm=11GB", s)
	}
	return sizeRule{prefix: normalizePrefix(prefix), bytes: int64(n)}, nil
}

// normalizeRef is the name a node's runtime stores an image under, minus the
// implicit Docker Hub registry: "python" and "docker.io/library/python:latest"
// are the same image, "python:3.11" another.
func normalizeRef(image string) string {
	ref := normalizePrefix(image)
	if !strings.Contains(ref, "@") && strings.LastIndex(ref, ":") <= strings.LastIndex(ref, "/") {
		ref += ":latest"
	}
	return ref
}

func normalizePrefix(s string) string {
	for _, p := range []string{"docker.io/library/", "docker.io/"} {
		if strings.HasPrefix(s, p) {
			return strings.TrimPrefix(s, p)
		}
	}
	return s
}

// pulledImage is an image present on the node.
type pulledImage struct {
	binDir string
	size   int64
}

// imageStore is one node's images: those present, and the pulls under way,
// which every pod waiting for the same image shares.
type imageStore struct {
	cfg   pullConfig
	rules []imageRule

	mu      sync.Mutex
	present map[string]pulledImage
	pulling map[string]*pull
}

// pull is one pull in flight; result and err are set before done closes.
type pull struct {
	done    chan struct{}
	result  pulledImage
	err     error
	waiters int
	cancel  context.CancelFunc
}

func newImageStore(cfg pullConfig, rules []imageRule) *imageStore {
	return &imageStore{cfg: cfg, rules: rules, present: map[string]pulledImage{}, pulling: map[string]*pull{}}
}

func (s *imageStore) lookup(image string) (pulledImage, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	img, ok := s.present[normalizeRef(image)]
	return img, ok
}

// fetch pulls image, or joins the pull of it under way, and waits for it.
// An image already present is fetched again at once (imagePullPolicy Always:
// the registry says the tag still names the layers the node has). When every
// pod waiting for a pull has stopped, the pull is abandoned.
func (s *imageStore) fetch(ctx context.Context, image string) (pulledImage, error) {
	ref := normalizeRef(image)
	s.mu.Lock()
	pl := s.pulling[ref]
	if pl == nil {
		pl = s.startLocked(ref, image)
	}
	pl.waiters++
	s.mu.Unlock()
	select {
	case <-pl.done:
		return pl.result, pl.err
	case <-ctx.Done():
		s.mu.Lock()
		if pl.waiters--; pl.waiters == 0 && s.pulling[ref] == pl {
			delete(s.pulling, ref)
			pl.cancel()
		}
		s.mu.Unlock()
		return pulledImage{}, ctx.Err()
	}
}

func (s *imageStore) startLocked(ref, image string) *pull {
	ctx, cancel := context.WithCancel(context.Background())
	pl := &pull{done: make(chan struct{}), cancel: cancel}
	s.pulling[ref] = pl
	binDir, err := resolveImage(s.rules, image)
	size := s.cfg.sizeOf(ref)
	took := s.cfg.pullTime(size)
	if _, have := s.present[ref]; have || err != nil {
		took = 0
	}
	go func() {
		t := time.NewTimer(took)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			err = ctx.Err()
		}
		s.mu.Lock()
		if err == nil {
			pl.result = pulledImage{binDir: binDir, size: size}
			s.present[ref] = pl.result
		}
		pl.err = err
		if s.pulling[ref] == pl {
			delete(s.pulling, ref)
		}
		s.mu.Unlock()
		close(pl.done)
	}()
	return pl
}
