package main

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

func TestSizesAreReadAsRegistriesAndQuantitiesWriteThem(t *testing.T) {
	for in, want := range map[string]float64{"11GB": 11e9, "1.5G": 1.5e9, "300MiB": 300 << 20, "42": 42, "0": 0} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GB", "11 parsecs", "-1GB"} {
		if _, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) accepted", in)
		}
	}
	if r, err := parseRate("2GB/s"); err != nil || r != 2e9 {
		t.Errorf("parseRate(2GB/s) = %v, %v", r, err)
	}
}

func TestTheLongestPrefixOfTheReferenceGivesTheSize(t *testing.T) {
	cfg := pullConfig{bytesPerSec: 1e9, defaultSize: 1e8}
	for _, s := range []string{"rayproject/ray-llm:slow-pull=60GB", "rayproject/ray=3GB", "docker.io/rayproject/ray-llm=11GB"} {
		r, err := parseSizeRule(s)
		if err != nil {
			t.Fatal(err)
		}
		cfg.sizes = append(cfg.sizes, r)
	}
	for image, want := range map[string]time.Duration{
		"rayproject/ray:2.60.0":                  3 * time.Second,
		"rayproject/ray-llm:2.52.0-py311-cu128":  11 * time.Second,
		"rayproject/ray-llm:slow-pull-readiness": 60 * time.Second,
		"docker.io/library/python:3.11":          100 * time.Millisecond,
	} {
		if got := cfg.pullTime(cfg.sizeOf(normalizeRef(image))); got != want {
			t.Errorf("%s pulls in %v, want %v", image, got, want)
		}
	}
	if got := (pullConfig{}).pullTime(11e9); got != 0 {
		t.Errorf("no rate: a pull takes %v", got)
	}
}

func TestReferencesNameImagesAsARuntimeStoresThem(t *testing.T) {
	for in, want := range map[string]string{
		"python":                            "python:latest",
		"docker.io/library/python:3.11":     "python:3.11",
		"localhost:5000/ray":                "localhost:5000/ray:latest",
		"rayproject/ray@sha256:abc":         "rayproject/ray@sha256:abc",
		"registry.example/unknown/thing:1":  "registry.example/unknown/thing:1",
		"docker.io/rayproject/ray-llm:2.52": "rayproject/ray-llm:2.52",
	} {
		if got := normalizeRef(in); got != want {
			t.Errorf("normalizeRef(%q) = %q, want %q", in, got, want)
		}
	}
	for image, want := range map[string]v1.PullPolicy{"python": v1.PullAlways, "python:latest": v1.PullAlways,
		"python:3.11": v1.PullIfNotPresent, "python@sha256:abc": v1.PullIfNotPresent} {
		if got := pullPolicy(&v1.Container{Image: image}); got != want {
			t.Errorf("default pull policy of %s = %s, want %s", image, got, want)
		}
	}
}

func TestPodsWaitingForOneImageShareItsPull(t *testing.T) {
	s := newImageStore(pullConfig{bytesPerSec: 1e9, defaultSize: 2e8}, []imageRule{{prefix: "python", binDir: "/usr/bin"}})
	started := time.Now()
	results := make(chan error, 2)
	for i := range 2 {
		go func() {
			// The second pod comes halfway through the first one's pull.
			time.Sleep(time.Duration(i) * 100 * time.Millisecond)
			_, err := s.fetch(context.Background(), "python:3.11")
			results <- err
		}()
	}
	for range 2 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(started); took < 200*time.Millisecond || took > 270*time.Millisecond {
		t.Errorf("two pods waited %v for one 200 ms pull", took)
	}
	if img, ok := s.lookup("docker.io/library/python:3.11"); !ok || img.binDir != "/usr/bin" || img.size != 2e8 {
		t.Errorf("after the pull the node has %+v, %v", img, ok)
	}
	started = time.Now()
	if _, err := s.fetch(context.Background(), "python:3.11"); err != nil || time.Since(started) > 50*time.Millisecond {
		t.Errorf("pulling a present image again (Always) took %v, %v", time.Since(started), err)
	}
}

func TestAPullNobodyWaitsForIsAbandoned(t *testing.T) {
	s := newImageStore(pullConfig{bytesPerSec: 1e9, defaultSize: 60e9}, []imageRule{{prefix: "python", binDir: "/usr/bin"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := s.fetch(ctx, "python:3.11")
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a cancelled pull succeeded")
		}
	case <-time.After(time.Second):
		t.Fatal("a pod deleted mid-pull still waits")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pulling) != 0 || len(s.present) != 0 {
		t.Errorf("after the last waiter left: pulling %v, present %v", s.pulling, s.present)
	}
}

func TestAnImageNoRuleProvidesFailsToPull(t *testing.T) {
	s := newImageStore(pullConfig{bytesPerSec: 1e9, defaultSize: 60e9}, []imageRule{{prefix: "python", binDir: "/usr/bin"}})
	started := time.Now()
	if _, err := s.fetch(context.Background(), "registry.example/thing:1"); err == nil {
		t.Fatal("an image no --image rule maps was pulled")
	}
	if time.Since(started) > 50*time.Millisecond {
		t.Errorf("a failing pull took %v", time.Since(started))
	}
}

func TestPullBackOffDoublesUpToItsCap(t *testing.T) {
	p := &provider{images: newImageStore(pullConfig{backoff: 10 * time.Second}, nil)}
	c := &ctrState{pr: &podRT{p: p, pod: &v1.Pod{}}}
	var got []time.Duration
	for range 8 {
		c.noteFailure("thing:1", "no")
		got = append(got, c.pullBackoff.backoff)
	}
	want := []time.Duration{10, 20, 40, 80, 160, 300, 300, 300}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("back-offs %v, want %v seconds", got, want)
		}
	}
	if msg, backingOff := c.inBackoff("thing:1"); !backingOff || msg != `Back-off pulling image "thing:1": ErrImagePull: no` {
		t.Errorf("in back-off: %v %q", backingOff, msg)
	}
	if _, backingOff := c.inBackoff("thing:2"); backingOff {
		t.Error("a new image inherits the old one's back-off")
	}
}

func TestPullFlagsThatMeanNothingAreRefused(t *testing.T) {
	cfg, err := parsePullFlags("2GB/s", "1GB", []string{"rayproject/ray-llm=11GB"}, 10*time.Second)
	if err != nil || cfg.bytesPerSec != 2e9 || cfg.defaultSize != 1e9 || len(cfg.sizes) != 1 || cfg.maxBackoff() != 300*time.Second {
		t.Fatalf("parsePullFlags = %+v, %v", cfg, err)
	}
	for _, bad := range []struct {
		rate, size string
		sizes      []string
		backoff    time.Duration
	}{
		{"fast", "0", nil, time.Second},
		{"1GB/s", "big", nil, time.Second},
		{"1GB/s", "0", []string{"rayproject/ray-llm"}, time.Second},
		{"1GB/s", "0", []string{"=11GB"}, time.Second},
		{"1GB/s", "0", nil, 0},
	} {
		if _, err := parsePullFlags(bad.rate, bad.size, bad.sizes, bad.backoff); err == nil {
			t.Errorf("parsePullFlags accepted %+v", bad)
		}
	}
}
