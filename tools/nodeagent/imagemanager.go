// What the kubelet's image manager does before each container start, with its
// wording (k8s.io/kubernetes pkg/kubelet/images, v1.37): the pull policy, the
// events `kubectl describe pod` lists, the container's waiting reason
// (ContainerCreating, ErrImagePull, ImagePullBackOff, ErrImageNeverPull), and
// the back-off per pod and image after a failed pull.
package main

import (
	"fmt"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

type pullOutcome int

const (
	imageReady pullOutcome = iota
	imageMissing
	podStopping
)

// pullBackoff is the kubelet's back-off entry for this container's image
// (keyed there by pod UID and image: a new image starts afresh).
type pullBackoff struct {
	image   string
	last    time.Time
	backoff time.Duration
	lastErr string
}

// awaitImage makes the container's image present, retrying as the kubelet's
// pod sync does, until it is or the pod stops. attempted is called after the
// first try: the kubelet tries a pod's containers one after the other.
func (c *ctrState) awaitImage(attempted func()) bool {
	for {
		updated := c.pr.updates()
		outcome := c.ensureImage()
		attempted()
		switch outcome {
		case imageReady:
			return true
		case podStopping:
			return false
		}
		if !c.pr.sleepUnlessUpdated(c.pr.p.images.cfg.backoff, updated) {
			return false
		}
	}
}

// ensureImage is one look at the image, as at one container start.
func (c *ctrState) ensureImage() pullOutcome {
	pr := c.pr
	pr.mu.Lock()
	image, policy := c.spec.Image, pullPolicy(&c.spec)
	pr.mu.Unlock()
	img, present := pr.p.images.lookup(image)
	switch {
	case policy == v1.PullNever && !present:
		msg := fmt.Sprintf("Container image %q is not present with pull policy of Never", image)
		c.event(v1.EventTypeWarning, "ErrImageNeverPull", msg)
		c.failStart("ErrImageNeverPull", msg)
		return imageMissing
	case policy != v1.PullAlways && present:
		c.event(v1.EventTypeNormal, "Pulled", fmt.Sprintf("Container image %q already present on machine", image))
		c.useImage(img)
		return imageReady
	}
	if msg, backingOff := c.inBackoff(image); backingOff {
		c.event(v1.EventTypeNormal, "BackOff", fmt.Sprintf("Back-off pulling image %q", image))
		c.failStart("ImagePullBackOff", msg)
		return imageMissing
	}
	c.event(v1.EventTypeNormal, "Pulling", fmt.Sprintf("Pulling image %q", image))
	started := time.Now()
	img, err := pr.p.images.fetch(pr.ctx, image)
	if pr.ctx.Err() != nil {
		pr.logf("container %s: stopped while pulling %s", c.spec.Name, image)
		return podStopping
	}
	if err != nil {
		c.event(v1.EventTypeWarning, "Failed", fmt.Sprintf("Failed to pull image %q: %v", image, err))
		c.noteFailure(image, err.Error())
		c.failStart("ErrImagePull", err.Error())
		return imageMissing
	}
	// Pods here never queue for a pull slot, so the pull and the wait are one.
	took := time.Since(started).Truncate(time.Millisecond)
	pr.logf("container %s: pulled %s (%d bytes) in %s", c.spec.Name, image, img.size, took)
	c.event(v1.EventTypeNormal, "Pulled", fmt.Sprintf("Successfully pulled image %q in %v (%v including waiting). Image size: %d bytes.",
		image, took, took, img.size))
	c.useImage(img)
	return imageReady
}

// pullPolicy is the API server's default when the field is empty: Always for
// a :latest or untagged image, IfNotPresent otherwise.
func pullPolicy(c *v1.Container) v1.PullPolicy {
	if c.ImagePullPolicy != "" {
		return c.ImagePullPolicy
	}
	if ref := normalizeRef(c.Image); !strings.Contains(ref, "@") && strings.HasSuffix(ref, ":latest") {
		return v1.PullAlways
	}
	return v1.PullIfNotPresent
}

func (c *ctrState) useImage(img pulledImage) {
	c.pr.mu.Lock()
	c.binDir = img.binDir
	c.pullBackoff = pullBackoff{}
	c.pr.mu.Unlock()
}

// failStart is a start that stopped at the image: the waiting reason and
// the "Error: REASON" event the kubelet's runtime manager adds.
func (c *ctrState) failStart(reason, msg string) {
	pr := c.pr
	pr.logf("container %s: %s: %s", c.spec.Name, reason, msg)
	c.event(v1.EventTypeWarning, "Failed", "Error: "+reason)
	pr.mu.Lock()
	c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: msg}}
	pr.mu.Unlock()
	pr.changed()
}

func (c *ctrState) inBackoff(image string) (string, bool) {
	c.pr.mu.Lock()
	defer c.pr.mu.Unlock()
	b := c.pullBackoff
	if b.image != image || time.Since(b.last) >= b.backoff {
		return "", false
	}
	return fmt.Sprintf("Back-off pulling image %q: ErrImagePull: %s", image, b.lastErr), true
}

// noteFailure doubles the back-off (flowcontrol.Backoff's rules: it starts
// again at the base once an entry is older than twice the cap).
func (c *ctrState) noteFailure(image, msg string) {
	cfg := c.pr.p.images.cfg
	c.pr.mu.Lock()
	defer c.pr.mu.Unlock()
	b := &c.pullBackoff
	if b.image != image || time.Since(b.last) > 2*cfg.maxBackoff() {
		*b = pullBackoff{image: image, backoff: cfg.backoff}
	} else {
		b.backoff = min(2*b.backoff, cfg.maxBackoff())
	}
	b.last, b.lastErr = time.Now(), msg
}

// event records an event on the container, as the kubelet refers to it.
func (c *ctrState) event(eventType, reason, msg string) {
	pr := c.pr
	pr.mu.Lock()
	field := "spec.containers{" + c.spec.Name + "}"
	if c.init {
		field = "spec.initContainers{" + c.spec.Name + "}"
	}
	ref := &v1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pr.pod.Namespace, Name: pr.pod.Name,
		UID: pr.pod.UID, ResourceVersion: pr.pod.ResourceVersion, FieldPath: field}
	pr.mu.Unlock()
	pr.p.events.Event(ref, eventType, reason, msg)
}
