// Turns a podRT's state into the PodStatus a kubelet would report: phase,
// conditions, IPs and per-container states.
package main

import (
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// setCond records a condition, keeping lastTransitionTime stable while the
// status does not change.
func (pr *podRT) setCond(t v1.PodConditionType, ok bool, reason string) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.setCondLocked(t, ok, reason)
}

func (pr *podRT) setCondLocked(t v1.PodConditionType, ok bool, reason string) {
	st := v1.ConditionFalse
	if ok {
		st = v1.ConditionTrue
	} else {
		reason = firstNonEmpty(reason, "NotReady")
	}
	if old, have := pr.conds[t]; have && old.Status == st && old.Reason == reason {
		return
	}
	if ok {
		reason = ""
	}
	pr.conds[t] = v1.PodCondition{Type: t, Status: st, Reason: reason, LastTransitionTime: metav1.Now()}
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (c *ctrState) statusLocked() v1.ContainerStatus {
	cs := v1.ContainerStatus{Name: c.spec.Name, State: c.state, LastTerminationState: c.last,
		Ready: c.ready, RestartCount: c.restarts, Image: c.spec.Image}
	if c.binDir != "" {
		cs.ImageID = "nodeagent://" + c.binDir
	}
	if c.inst != nil {
		cs.ContainerID = "nodeagent://" + c.inst.id
	}
	started := c.state.Running != nil && c.started
	cs.Started = &started
	return cs
}

func (pr *podRT) phaseLocked() v1.PodPhase {
	if pr.failReason != "" {
		return v1.PodFailed
	}
	if !pr.initDone && !pr.stopped {
		return v1.PodPending
	}
	var running, fresh, ok, failed int
	for _, c := range pr.ctrs {
		switch {
		case c.state.Running != nil:
			running++
		case c.state.Terminated != nil && c.state.Terminated.ExitCode == 0:
			ok++
		case c.state.Terminated != nil:
			failed++
		case c.last.Terminated != nil: // waiting to restart
			running++
		default:
			fresh++
		}
	}
	switch {
	case pr.stopped:
		if failed > 0 || fresh > 0 || running > 0 {
			return v1.PodFailed
		}
		return v1.PodSucceeded
	case fresh > 0:
		return v1.PodPending
	case running > 0:
		return v1.PodRunning
	}
	switch pr.pod.Spec.RestartPolicy {
	case v1.RestartPolicyNever:
		if failed > 0 {
			return v1.PodFailed
		}
		return v1.PodSucceeded
	case v1.RestartPolicyOnFailure:
		if failed > 0 {
			return v1.PodRunning
		}
		return v1.PodSucceeded
	}
	return v1.PodRunning
}

// snapshot is the pod as the provider sees it, safe to hand out.
func (pr *podRT) snapshot() *v1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pod := pr.pod.DeepCopy()
	st := v1.PodStatus{Phase: pr.phaseLocked(), HostIP: "127.0.0.1",
		HostIPs: []v1.HostIP{{IP: "127.0.0.1"}}, StartTime: &pr.startTime, QOSClass: pod.Status.QOSClass}
	if pr.failReason != "" {
		st.Reason, st.Message = pr.failReason, pr.failMessage
	}
	if pr.net != nil && !pr.stopped {
		st.PodIP = pr.net.ip
		st.PodIPs = []v1.PodIP{{IP: pr.net.ip}}
	}
	allReady := pr.initDone && !pr.stopped
	for _, c := range pr.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, c.statusLocked())
	}
	for _, c := range pr.ctrs {
		st.ContainerStatuses = append(st.ContainerStatuses, c.statusLocked())
		allReady = allReady && c.ready
	}
	notReady := "ContainersNotReady"
	if !pr.initDone {
		notReady = "ContainersNotInitialized"
	}
	if st.Phase == v1.PodSucceeded || st.Phase == v1.PodFailed {
		notReady = "PodCompleted"
	}
	pr.setCondLocked(v1.PodScheduled, true, "")
	pr.setCondLocked(v1.PodInitialized, pr.initDone || (pr.stopped && len(pr.inits) == 0), "ContainersNotInitialized")
	pr.setCondLocked(v1.ContainersReady, allReady, notReady)
	pr.setCondLocked(v1.PodReady, allReady, notReady)
	if pr.stopped {
		pr.setCondLocked(v1.PodReadyToStartContainers, false, "")
	}
	for _, t := range []v1.PodConditionType{v1.PodReadyToStartContainers, v1.PodInitialized, v1.PodReady, v1.ContainersReady, v1.PodScheduled} {
		if c, ok := pr.conds[t]; ok {
			st.Conditions = append(st.Conditions, c)
		}
	}
	pod.Status = st
	return pod
}
