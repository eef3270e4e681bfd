#!/usr/bin/env python3
"""KubeRay operator STAND-IN for rayform's local tests and demo. It is not KubeRay.

It exists only because no KubeRay controller (and no kubelet to run a Ray head pod) can run on the
machines where rayform is tested: there is a real kube-apiserver + etcd (scripts/testcluster) and a
real Ray Serve on loopback (scripts/rayserve), and this process plays the operator between them,
moving a RayService's status the way KubeRay >= 1.4 does (see docs/local-stand-ins.md and
../shared/reference/domain.md section A):

  * adds the finalizer ``ray.io/rayservice-finalizer``;
  * on a new ``metadata.generation``: sets ``status.observedGeneration``, the conditions
    Ready=False/Initializing and UpgradeInProgress=False/Initializing, and
    ``pendingServiceStatus.rayClusterName = <name>-<5 random chars>``, and creates that RayCluster
    object (ray.io/v1, spec copied from ``spec.rayClusterConfig``, labels
    ``ray.io/originated-from-cr-name`` / ``ray.io/originated-from-crd=RayService``, owner reference);
    when only ``serveConfigV2`` changed, the apps are updated in place on the active cluster;
  * after ``--reconcile-delay`` (the time a head pod would take), PUTs ``spec.serveConfigV2``
    (YAML -> JSON) to the Ray dashboard's ``/api/serve/applications/``, like KubeRay, and records
    the Events ``UpdatedServeApplications`` / ``FailedToUpdateServeApplications``;
  * polls ``GET /api/serve/applications/`` and mirrors each app's status and message and its
    deployments' status and message into ``applicationStatuses``; once every app is RUNNING it
    promotes pending -> active, sets numServeEndpoints 1, serviceStatus Running and
    Ready=True/NonZeroServeEndpoints;
  * on deletion: removes the RayService's apps from Ray, deletes its RayCluster objects and
    removes the finalizer.

Local differences, all deliberate:
  * one local Ray Serve stands for every RayCluster: the stand-in PUTs the union of the apps of all
    RayServices it watches (app names must differ), and "removing" apps is a PUT without them
    (DELETE /api/serve/applications/ would shut Serve's proxy down);
  * ``--working-dir DIR`` sets ``runtime_env.working_dir`` of every app to ``local://DIR`` so a
    manifest written for a cluster is served from a local checkout (Ray 2.60 refuses plain paths);
  * ``http_options`` {host, port} taken from ``--serve-url`` are added to the PUT when the config
    has none (``--no-inject-http-options`` turns this off). While Serve runs they change nothing;
    when the PUT starts Serve (``scripts/rayserve up --no-serve``, as on a real head pod, or after a
    DELETE) they keep the proxy on the loopback port the tests use, instead of Serve's REST default
    0.0.0.0:8000;
  * numServeEndpoints is 1 while an active cluster exists and Serve's ``/-/healthz`` answers 200
    (or always, without ``--serve-url``); there are no pods, Services or EndpointSlices.

It talks to Kubernetes only through ``kubectl`` (KUBECONFIG), with one ``kubectl get --watch``
per scope and ``kubectl patch --subresource=status`` for status.
"""

import argparse
import copy
import datetime as dt
import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import yaml

FINALIZER = "ray.io/rayservice-finalizer"
LABEL_CR_NAME = "ray.io/originated-from-cr-name"
LABEL_CRD = "ray.io/originated-from-crd"
HASH_ANNOTATION = "standin.rayform.local/cluster-config-hash"
# KubeRay names clusters <rayservice>-<utilrand.String(5)>; that alphabet has no vowels.
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
INITIALIZING = "RayService is initializing"
COMPONENT = "kuberay-standin"

Key = Tuple[str, str]  # (namespace, name)


def log(msg: str) -> None:
    ts = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(f"{ts} kuberay-standin: {msg}", file=sys.stderr, flush=True)


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- kubectl


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Optional[str], context: Optional[str]):
        self.base = [binary]
        if kubeconfig:
            self.base += ["--kubeconfig", kubeconfig]
        if context:
            self.base += ["--context", context]

    def run(self, args: List[str], stdin: Optional[str] = None, timeout: float = 30) -> Tuple[int, str, str]:
        try:
            p = subprocess.run(
                self.base + args,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return 124, "", f"kubectl {' '.join(args[:3])} timed out after {timeout}s"
        return p.returncode, p.stdout, p.stderr.strip()

    def must(self, args: List[str], stdin: Optional[str] = None) -> str:
        rc, out, err = self.run(args, stdin)
        if rc != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:4])}...: {err}")
        return out

    def popen_watch(self, args: List[str]) -> subprocess.Popen:
        return subprocess.Popen(
            self.base + args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )


class Watcher(threading.Thread):
    """Runs `kubectl get rayservices.ray.io --watch -o json --output-watch-events` and feeds events.

    On any exit of kubectl it posts ("relist", scope) so the main loop re-lists, then restarts.
    """

    def __init__(self, kube: Kubectl, scope_args: List[str], events: "queue.Queue", stop: threading.Event):
        super().__init__(daemon=True)
        self.kube, self.scope_args, self.events, self.stop = kube, scope_args, events, stop
        self.proc: Optional[subprocess.Popen] = None

    def run(self) -> None:
        decoder = json.JSONDecoder()
        while not self.stop.is_set():
            self.proc = self.kube.popen_watch(
                ["get", "rayservices.ray.io", *self.scope_args, "-o", "json", "--watch", "--output-watch-events"]
            )
            buf = ""
            assert self.proc.stdout is not None
            fd = self.proc.stdout.fileno()
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk.decode(errors="replace")
                while True:
                    stripped = buf.lstrip()
                    if not stripped:
                        buf = ""
                        break
                    try:
                        ev, end = decoder.raw_decode(stripped)
                    except json.JSONDecodeError:
                        buf = stripped
                        break  # incomplete: read more
                    buf = stripped[end:]
                    if isinstance(ev, dict) and "object" in ev:
                        self.events.put(("event", ev.get("type"), ev["object"]))
            rc = self.proc.wait()
            if self.stop.is_set():
                return
            err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace").strip()
            log(f"watch {' '.join(self.scope_args)} ended (rc {rc}){': ' + err[-300:] if err else ''}; restarting")
            self.events.put(("relist", None, None))
            self.stop.wait(1.0)

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()


# --------------------------------------------------------------------------- Ray dashboard


class Ray:
    def __init__(self, dashboard: str, serve_url: Optional[str]):
        self.dashboard = dashboard.rstrip("/")
        self.serve_url = serve_url.rstrip("/") if serve_url else None

    def _req(self, method: str, url: str, body: Optional[bytes] = None, timeout: float = 10) -> Tuple[int, str]:
        req = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def put_apps(self, config: Dict[str, Any]) -> Tuple[int, str]:
        return self._req("PUT", f"{self.dashboard}/api/serve/applications/", json.dumps(config).encode(), timeout=30)

    def get_apps(self) -> Dict[str, Any]:
        status, text = self._req("GET", f"{self.dashboard}/api/serve/applications/", timeout=5)
        if status != 200:
            raise RuntimeError(f"GET /api/serve/applications/ answered {status}: {text[:200]}")
        return json.loads(text).get("applications") or {}

    def proxy_healthy(self) -> bool:
        if not self.serve_url:
            return True
        try:
            status, _ = self._req("GET", f"{self.serve_url}/-/healthz", timeout=2)
            return status == 200
        except Exception:  # noqa: BLE001 - connection refused etc.: not healthy
            return False


# --------------------------------------------------------------------------- the stand-in


class StandIn:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.kube = Kubectl(args.kubectl, args.kubeconfig, args.context)
        self.ray = Ray(args.dashboard, args.serve_url)
        self.events: "queue.Queue" = queue.Queue()
        self.stop = threading.Event()
        self.cache: Dict[Key, Dict[str, Any]] = {}
        # Per RayService uid: {"gen": int, "due": monotonic time of the serve PUT}
        self.mem: Dict[str, Dict[str, Any]] = {}
        self.last_put: Optional[str] = None  # JSON of the last PUT that Ray accepted
        self.last_put_error: Optional[Tuple[str, str]] = None  # (body json, error)
        self.next_put_retry = 0.0
        self.ray_apps: Optional[Dict[str, Any]] = None
        self.ray_error: Optional[str] = None
        self.proxy_ok = False
        self.last_ray_poll = 0.0
        self.last_relist = 0.0
        self.event_keys: set = set()
        self.watchers: List[Watcher] = []

    # ---- scope

    def scope_args(self) -> List[List[str]]:
        sel = ["-l", self.args.selector] if self.args.selector else []
        if self.args.namespace:
            return [["-n", ns, *sel] for ns in self.args.namespace]
        return [["-A", *sel]]

    def relist(self) -> None:
        seen: Dict[Key, Dict[str, Any]] = {}
        for scope in self.scope_args():
            out = self.kube.must(["get", "rayservices.ray.io", *scope, "-o", "json"])
            for obj in json.loads(out).get("items", []):
                seen[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        self.cache = seen
        self.last_relist = time.monotonic()

    # ---- helpers on objects

    @staticmethod
    def key(obj: Dict[str, Any]) -> Key:
        return obj["metadata"]["namespace"], obj["metadata"]["name"]

    def serve_config(self, obj: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        text = (obj.get("spec") or {}).get("serveConfigV2")
        if not text:
            return None, "spec.serveConfigV2 is empty"
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            return None, f"spec.serveConfigV2 is not valid YAML: {e}"
        if not isinstance(cfg, dict):
            return None, "spec.serveConfigV2 is not a YAML mapping"
        cfg = copy.deepcopy(cfg)
        apps = cfg.get("applications") or []
        if self.args.working_dir:
            wd = os.path.abspath(self.args.working_dir)
            for app in apps:
                if isinstance(app, dict):
                    env = app.setdefault("runtime_env", {}) or {}
                    app["runtime_env"] = env
                    env["working_dir"] = "local://" + wd
        return cfg, None

    @staticmethod
    def app_names(cfg: Dict[str, Any]) -> List[str]:
        names = []
        for app in cfg.get("applications") or []:
            if isinstance(app, dict):
                names.append(app.get("name") or "default")
        return names

    def emit_event(self, obj: Dict[str, Any], etype: str, reason: str, message: str) -> None:
        ns, name = self.key(obj)
        dedup = (obj["metadata"]["uid"], reason, message)
        if dedup in self.event_keys:
            return
        self.event_keys.add(dedup)
        ts = now_rfc3339()
        ev = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{name}.{random.getrandbits(64):016x}",
                "namespace": ns,
            },
            "involvedObject": {
                "apiVersion": "ray.io/v1",
                "kind": "RayService",
                "name": name,
                "namespace": ns,
                "uid": obj["metadata"]["uid"],
            },
            "type": etype,
            "reason": reason,
            "message": message,
            "source": {"component": COMPONENT},
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        rc, _, err = self.kube.run(["create", "-f", "-"], json.dumps(ev))
        if rc != 0:
            log(f"{ns}/{name}: could not record event {reason}: {err}")

    # ---- metadata: finalizer

    def ensure_finalizer(self, obj: Dict[str, Any]) -> None:
        ns, name = self.key(obj)
        fins = obj["metadata"].get("finalizers") or []
        if FINALIZER in fins:
            return
        if fins:
            ops = [
                {"op": "test", "path": "/metadata/finalizers", "value": fins},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ]
        else:
            ops = [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
        rc, out, err = self.kube.run(
            ["patch", "rayservices.ray.io", name, "-n", ns, "--type=json", "-p", json.dumps(ops), "-o", "json"]
        )
        if rc == 0:
            log(f"{ns}/{name}: added finalizer {FINALIZER}")
            self.cache[(ns, name)] = json.loads(out)
        else:
            log(f"{ns}/{name}: adding finalizer failed (will retry): {err}")

    def remove_finalizer(self, obj: Dict[str, Any]) -> bool:
        ns, name = self.key(obj)
        fins = obj["metadata"].get("finalizers") or []
        if FINALIZER not in fins:
            return True
        ops = [
            {"op": "test", "path": "/metadata/finalizers", "value": fins},
            {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in fins if f != FINALIZER]},
        ]
        rc, _, err = self.kube.run(["patch", "rayservices.ray.io", name, "-n", ns, "--type=json", "-p", json.dumps(ops)])
        if rc != 0 and "NotFound" not in err:
            log(f"{ns}/{name}: removing finalizer failed (will retry): {err}")
            return False
        log(f"{ns}/{name}: removed finalizer; the API server deletes the RayService now")
        return True

    # ---- RayCluster objects

    def cluster_selector(self, name: str) -> str:
        return f"{LABEL_CR_NAME}={name},{LABEL_CRD}=RayService"

    def create_cluster(self, obj: Dict[str, Any], cluster: str, cfg_hash: str) -> None:
        ns, name = self.key(obj)
        spec = copy.deepcopy((obj.get("spec") or {}).get("rayClusterConfig") or {})
        if not spec.get("headGroupSpec"):
            spec["headGroupSpec"] = {
                "rayStartParams": {},
                "template": {"spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}},
            }
        rc_obj = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {
                "name": cluster,
                "namespace": ns,
                "labels": {LABEL_CR_NAME: name, LABEL_CRD: "RayService"},
                "annotations": {HASH_ANNOTATION: cfg_hash},
                "ownerReferences": [
                    {
                        "apiVersion": "ray.io/v1",
                        "kind": "RayService",
                        "name": name,
                        "uid": obj["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
        }
        rc, _, err = self.kube.run(["create", "-f", "-"], json.dumps(rc_obj))
        if rc != 0 and "AlreadyExists" not in err:
            log(f"{ns}/{name}: creating RayCluster {cluster} failed: {err}")
        else:
            log(f"{ns}/{name}: created RayCluster {cluster}")

    def mark_cluster_ready(self, ns: str, cluster: str) -> None:
        status = {"state": "ready", "desiredWorkerReplicas": 0, "readyWorkerReplicas": 0,
                  "availableWorkerReplicas": 0, "lastUpdateTime": now_rfc3339()}
        ops = [{"op": "add", "path": "/status", "value": status}]
        rc, _, err = self.kube.run(
            ["patch", "rayclusters.ray.io", cluster, "-n", ns, "--subresource=status", "--type=json", "-p", json.dumps(ops)]
        )
        if rc != 0:
            log(f"{ns}/{cluster}: RayCluster status patch failed: {err}")

    def cluster_hash(self, ns: str, cluster: str) -> Optional[str]:
        rc, out, _ = self.kube.run(["get", "rayclusters.ray.io", cluster, "-n", ns, "-o", "json"])
        if rc != 0:
            return None
        return ((json.loads(out).get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)

    def delete_clusters(self, ns: str, name: str, keep: Optional[str] = None) -> None:
        rc, out, err = self.kube.run(["get", "rayclusters.ray.io", "-n", ns, "-l", self.cluster_selector(name), "-o", "json"])
        if rc != 0:
            log(f"{ns}/{name}: listing RayClusters failed: {err}")
            return
        for item in json.loads(out).get("items", []):
            cname = item["metadata"]["name"]
            if cname == keep:
                continue
            rc, _, err = self.kube.run(["delete", "rayclusters.ray.io", cname, "-n", ns, "--wait=false", "--ignore-not-found"])
            log(f"{ns}/{name}: deleted RayCluster {cname}" if rc == 0 else f"{ns}/{name}: deleting {cname} failed: {err}")

    # ---- status

    def patch_status(self, obj: Dict[str, Any], status: Dict[str, Any]) -> None:
        ns, name = self.key(obj)
        ops = [{"op": "add", "path": "/status", "value": status}]
        rc, out, err = self.kube.run(
            ["patch", "rayservices.ray.io", name, "-n", ns, "--subresource=status", "--type=json",
             "-p", json.dumps(ops), "-o", "json"]
        )
        if rc != 0:
            log(f"{ns}/{name}: status patch failed (will retry): {err}")
            return
        self.cache[(ns, name)] = json.loads(out)

    @staticmethod
    def set_condition(conds: List[Dict[str, Any]], ctype: str, status: str, reason: str, message: str, gen: int) -> None:
        for c in conds:
            if c.get("type") == ctype:
                if c.get("status") != status:
                    c["lastTransitionTime"] = now_rfc3339()
                c.update(status=status, reason=reason, message=message, observedGeneration=gen)
                return
        conds.append({"type": ctype, "status": status, "reason": reason, "message": message,
                      "observedGeneration": gen, "lastTransitionTime": now_rfc3339()})

    def conditions(self, old: List[Dict[str, Any]], st: Dict[str, Any]) -> List[Dict[str, Any]]:
        """KubeRay >= 1.3 condition rules (calculateConditions), restated."""
        conds = copy.deepcopy(old or [])
        gen = st.get("observedGeneration", 0)
        if not conds:
            self.set_condition(conds, "Ready", "False", "Initializing", INITIALIZING, gen)
            self.set_condition(conds, "UpgradeInProgress", "False", "Initializing", INITIALIZING, gen)
        ready = next((c for c in conds if c["type"] == "Ready"), None)
        if st.get("numServeEndpoints", 0) > 0:
            self.set_condition(conds, "Ready", "True", "NonZeroServeEndpoints",
                               "Number of serve endpoints is greater than 0", gen)
        elif ready and ready.get("status") == "True":
            self.set_condition(conds, "Ready", "False", "ZeroServeEndpoints", "Number of serve endpoints dropped to 0", gen)
        else:
            for c in conds:  # keep reason/message, refresh observedGeneration
                if c["type"] == "Ready":
                    c["observedGeneration"] = gen
        active = (st.get("activeServiceStatus") or {}).get("rayClusterName")
        pending = (st.get("pendingServiceStatus") or {}).get("rayClusterName")
        if active and pending:
            self.set_condition(conds, "UpgradeInProgress", "True", "BothActivePendingClustersExist",
                               "Both active and pending Ray clusters exist", gen)
        elif active:
            self.set_condition(conds, "UpgradeInProgress", "False", "NoPendingCluster",
                               "Active Ray cluster exists and no pending Ray cluster", gen)
        else:
            up = next((c for c in conds if c["type"] == "UpgradeInProgress"), None)
            if up is None or up.get("reason") != "Initializing":
                self.set_condition(conds, "UpgradeInProgress", "Unknown", "NoActiveCluster",
                                   "No active Ray cluster exists, and the RayService is not initializing.", gen)
            else:
                up["observedGeneration"] = gen
        return conds

    def app_statuses(self, names: List[str]) -> Tuple[Dict[str, Any], bool]:
        """applicationStatuses for these app names from Ray's answer; and whether all are RUNNING."""
        out: Dict[str, Any] = {}
        all_running = bool(names) and self.ray_apps is not None
        for n in names:
            a = (self.ray_apps or {}).get(n)
            if not a:
                all_running = False
                continue
            entry: Dict[str, Any] = {"status": a.get("status") or ""}
            if a.get("message"):
                entry["message"] = a["message"]
            deps = {}
            for dname, d in (a.get("deployments") or {}).items():
                de = {"status": d.get("status") or ""}
                if d.get("message"):
                    de["message"] = d["message"]
                deps[dname] = de
            if deps:
                entry["serveDeploymentStatuses"] = deps
            out[n] = entry
            if a.get("status") != "RUNNING":
                all_running = False
        return out, all_running

    # ---- reconcile one RayService

    def reconcile(self, obj: Dict[str, Any], now: float) -> None:
        ns, name = self.key(obj)
        meta = obj["metadata"]
        uid, gen = meta["uid"], meta.get("generation", 1)
        status = copy.deepcopy(obj.get("status") or {})
        mem = self.mem.setdefault(uid, {"gen": None, "due": 0.0, "inplace": False})

        if FINALIZER not in (meta.get("finalizers") or []):
            self.ensure_finalizer(obj)
            obj = self.cache.get((ns, name), obj)

        new = copy.deepcopy(status)
        if mem["gen"] != gen:
            if status.get("observedGeneration") == gen:
                # Already reconciled (the stand-in restarted): just make sure Ray has the apps.
                mem.update(gen=gen, due=now, inplace=False)
            else:
                self.start_generation(obj, status, new, gen, now, mem)
        if mem["inplace"]:
            new["observedGeneration"] = status.get("observedGeneration", gen)

        cfg, _ = self.serve_config(obj)
        names = self.app_names(cfg) if cfg else []
        deployed = now >= mem["due"] and self.last_put is not None and self.owned_apps_put(obj)
        apps, all_running = self.app_statuses(names) if deployed else ({}, False)
        if mem["inplace"] and deployed and self.ray_apps is not None:
            # KubeRay bumps observedGeneration in the reconcile that PUT the new config.
            new["observedGeneration"] = gen
            mem["inplace"] = False

        pending = (new.get("pendingServiceStatus") or {}).get("rayClusterName")
        active = (new.get("activeServiceStatus") or {}).get("rayClusterName")
        after: List[Any] = []
        if pending:
            ps = new.setdefault("pendingServiceStatus", {})
            if apps:
                ps["applicationStatuses"] = apps
            if all_running:
                # The pending cluster is ready: switch traffic to it. The RayCluster bookkeeping
                # waits until the RayService status is written (each kubectl call costs ~0.1 s).
                promoted, old_active = pending, active
                after.append(lambda: self.mark_cluster_ready(ns, promoted))
                if old_active and old_active != promoted:
                    after.append(lambda: self.delete_clusters(ns, name, keep=promoted))
                new["activeServiceStatus"] = copy.deepcopy(ps)
                new["pendingServiceStatus"] = {}
                active, pending = pending, None
                log(f"{ns}/{name}: all apps RUNNING; RayCluster {active} is active")
        elif active and apps:
            new.setdefault("activeServiceStatus", {})["applicationStatuses"] = apps

        new["numServeEndpoints"] = 1 if (active and self.proxy_ok) else 0
        new["conditions"] = self.conditions(status.get("conditions") or [], new)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in new["conditions"])
        if ready:
            new["serviceStatus"] = "Running"
        else:
            new.pop("serviceStatus", None)  # KubeRay >= 1.3 omits the empty value

        def comparable(s: Dict[str, Any]) -> str:
            s = {k: v for k, v in s.items() if k != "lastUpdateTime"}
            return json.dumps(s, sort_keys=True)

        if comparable(new) != comparable(status):
            new["lastUpdateTime"] = now_rfc3339()
            self.patch_status(obj, new)
            summary = {n: a.get("status") for n, a in apps.items()}
            log(f"{ns}/{name}: status gen={new.get('observedGeneration')} ready={ready} "
                f"endpoints={new['numServeEndpoints']} apps={summary}")
        for action in after:
            action()

    def start_generation(self, obj: Dict[str, Any], status: Dict[str, Any], new: Dict[str, Any],
                         gen: int, now: float, mem: Dict[str, Any]) -> None:
        """A new spec: pick (and create) the cluster that will serve it, like KubeRay does."""
        ns, name = self.key(obj)
        cfg_hash = stable_hash((obj.get("spec") or {}).get("rayClusterConfig") or {})
        active = (status.get("activeServiceStatus") or {}).get("rayClusterName")
        pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
        due = now + self.args.reconcile_delay
        if pending and self.cluster_hash(ns, pending) == cfg_hash:
            target, inplace = pending, False  # serveConfigV2 changed during the first deploy / upgrade
        elif active and not pending and self.cluster_hash(ns, active) == cfg_hash:
            # Only serveConfigV2 changed: update the apps in place on the active cluster, no new cluster.
            target, inplace, due = active, True, now
        else:
            if pending:
                self.delete_clusters(ns, name, keep=active)
            target, inplace = f"{name}-{''.join(random.choice(SUFFIX_ALPHABET) for _ in range(5))}", False
            self.create_cluster(obj, target, cfg_hash)
            new["pendingServiceStatus"] = {"rayClusterName": target}
        log(f"{ns}/{name}: generation {gen}: "
            + (f"serve config update in place on RayCluster {target}" if inplace else f"pending RayCluster {target}"))
        if not inplace:
            new["observedGeneration"] = gen
            new.setdefault("numServeEndpoints", 0)
        mem.update(gen=gen, due=due, inplace=inplace)

    def owned_apps_put(self, obj: Dict[str, Any]) -> bool:
        """Whether the last accepted PUT contained this RayService's current apps."""
        cfg, _ = self.serve_config(obj)
        if not cfg or self.last_put is None:
            return False
        put_apps = {a.get("name") or "default": a for a in json.loads(self.last_put).get("applications", [])}
        return all(
            put_apps.get(a.get("name") or "default") == a
            for a in (cfg.get("applications") or [])
            if isinstance(a, dict)
        )

    # ---- the Ray side: one PUT of the union of all live RayServices' apps

    def desired_config(self, now: float) -> Tuple[Dict[str, Any], Dict[Key, str]]:
        union: Dict[str, Any] = {"applications": []}
        errors: Dict[Key, str] = {}
        owners: Dict[str, Key] = {}
        live = [o for o in self.cache.values() if not o["metadata"].get("deletionTimestamp")]
        live.sort(key=lambda o: (o["metadata"].get("creationTimestamp", ""), o["metadata"]["name"]))
        for obj in live:
            mem = self.mem.get(obj["metadata"]["uid"])
            if not mem or mem["gen"] is None:
                continue
            if now < mem["due"]:
                # Not due yet (the new cluster's "head pod" is starting): what was deployed stays.
                cfg = mem.get("last_cfg")
                if not cfg:
                    continue
            else:
                cfg, err = self.serve_config(obj)
                if err:
                    errors[self.key(obj)] = err
                    continue
                mem["last_cfg"] = cfg
            for k, v in cfg.items():
                if k != "applications" and k not in union:
                    union[k] = v
            for app in cfg.get("applications") or []:
                n = app.get("name") or "default"
                if n in owners:
                    errors[self.key(obj)] = f"app name {n!r} is already deployed by {'/'.join(owners[n])}"
                    continue
                owners[n] = self.key(obj)
                union["applications"].append(app)
        if self.args.inject_http_options and self.ray.serve_url and "http_options" not in union:
            u = urllib.parse.urlparse(self.ray.serve_url)
            union["http_options"] = {"host": u.hostname, "port": u.port}
        return union, errors

    def sync_ray(self, now: float) -> None:
        union, errors = self.desired_config(now)
        for key, err in errors.items():
            obj = self.cache.get(key)
            if obj:
                self.emit_event(obj, "Warning", "FailedToUpdateServeApplications", err)
        body = json.dumps(union, sort_keys=True)
        if body == self.last_put:
            return
        if self.last_put_error and self.last_put_error[0] == body and now < self.next_put_retry:
            return
        if not union["applications"] and self.ray_apps == {}:
            self.last_put = body  # nothing to remove
            return
        try:
            code, text = self.ray.put_apps(union)
        except Exception as e:  # noqa: BLE001 - connection refused while the dashboard starts
            code, text = 0, str(e)
        names = [a.get("name") for a in union["applications"]]
        owners = [o for o in self.cache.values() if self.owns_any(o, names)]
        if code == 200:
            log(f"PUT /api/serve/applications/ apps={names} -> 200")
            self.last_put, self.last_put_error = body, None
            for o in owners:
                self.emit_event(o, "Normal", "UpdatedServeApplications",
                                f"Updated serve applications to the RayCluster {self.cluster_of(o)}")
            self.last_ray_poll = 0.0  # poll right away
        else:
            err = f"{code} {text.strip()[:2000]}" if code else text
            if not self.last_put_error or self.last_put_error[0] != body:
                log(f"PUT /api/serve/applications/ apps={names} failed: {err[:300]}")
            self.last_put_error = (body, err)
            self.next_put_retry = now + 2.0
            for o in owners:
                self.emit_event(o, "Warning", "FailedToUpdateServeApplications",
                                f"Failed to update serve applications to the RayCluster {self.cluster_of(o)}: {err}")

    def owns_any(self, obj: Dict[str, Any], names: List[str]) -> bool:
        cfg, _ = self.serve_config(obj)
        return bool(cfg) and any(n in names for n in self.app_names(cfg))

    @staticmethod
    def cluster_of(obj: Dict[str, Any]) -> str:
        st = obj.get("status") or {}
        c = (st.get("pendingServiceStatus") or {}).get("rayClusterName") or \
            (st.get("activeServiceStatus") or {}).get("rayClusterName") or "?"
        return f"{obj['metadata']['namespace']}/{c}"

    def poll_ray(self, now: float, unsettled: bool) -> None:
        interval = self.args.poll_interval if unsettled else 2.0
        if now - self.last_ray_poll < interval:
            return
        self.last_ray_poll = now
        try:
            self.ray_apps = self.ray.get_apps()
            if self.ray_error:
                log("Ray dashboard answers again")
            self.ray_error = None
        except Exception as e:  # noqa: BLE001
            if self.ray_error is None:
                log(f"Ray dashboard unreachable: {e}")
            self.ray_error = str(e)
            self.ray_apps = None
        self.proxy_ok = self.ray.proxy_healthy()

    # ---- deletion

    def finalize(self, obj: Dict[str, Any]) -> None:
        ns, name = self.key(obj)
        if FINALIZER not in (obj["metadata"].get("finalizers") or []):
            return
        cfg, _ = self.serve_config(obj)
        names = self.app_names(cfg) if cfg else []
        if names and self.last_put is not None and self.ray_error is None:
            still = [a.get("name") for a in json.loads(self.last_put).get("applications", [])]
            if any(n in still for n in names):
                return  # sync_ray removes them first (the object is excluded from the union)
        if self.ray_error is not None:
            log(f"{ns}/{name}: Ray is unreachable ({self.ray_error}); finalizing without removing its apps")
        self.delete_clusters(ns, name)
        if self.remove_finalizer(obj):
            self.mem.pop(obj["metadata"]["uid"], None)

    # ---- main loop

    def unsettled(self) -> bool:
        for o in self.cache.values():
            st = o.get("status") or {}
            if o["metadata"].get("deletionTimestamp") or st.get("observedGeneration") != o["metadata"].get("generation"):
                return True
            if (st.get("pendingServiceStatus") or {}).get("rayClusterName"):
                return True
            apps = (st.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
            if any(a.get("status") != "RUNNING" for a in apps.values()):
                return True
        return False

    def run(self) -> int:
        self.relist()
        for scope in self.scope_args():
            w = Watcher(self.kube, scope, self.events, self.stop)
            w.start()
            self.watchers.append(w)
        log(f"watching rayservices.ray.io {' '.join(' '.join(s) for s in self.scope_args())}; "
            f"dashboard {self.ray.dashboard}; serve {self.ray.serve_url or '-'}; "
            f"reconcile delay {self.args.reconcile_delay}s")
        if self.args.ready_file:
            with open(self.args.ready_file, "w") as f:
                f.write(str(os.getpid()))
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - keep running, like a controller
                log(f"reconcile error: {e!r}")
                self.stop.wait(0.5)
        for w in self.watchers:
            w.terminate()
        log("stopped")
        return 0

    def step(self) -> None:
        timeout = self.args.poll_interval
        try:
            kind, etype, obj = self.events.get(timeout=timeout)
            batch = [(kind, etype, obj)]
            while True:
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
        except queue.Empty:
            batch = []
        for kind, etype, obj in batch:
            if kind == "relist":
                self.relist()
            elif etype == "DELETED":
                self.cache.pop(self.key(obj), None)
                self.mem.pop(obj["metadata"]["uid"], None)
            elif etype in ("ADDED", "MODIFIED"):
                k = self.key(obj)
                old = self.cache.get(k)
                # Our own patches return newer objects than a late watch event may carry.
                if old and rv(old) > rv(obj):
                    continue
                self.cache[k] = obj
        now = time.monotonic()
        if now - self.last_relist > self.args.resync:
            self.relist()
        if self.args.watch_pid and not pid_alive(self.args.watch_pid):
            log(f"watched PID {self.args.watch_pid} exited; stopping")
            self.stop.set()
            return
        self.poll_ray(now, self.unsettled())
        for obj in list(self.cache.values()):
            if not obj["metadata"].get("deletionTimestamp"):
                self.reconcile(obj, now)
        self.sync_ray(now)
        for obj in list(self.cache.values()):
            if obj["metadata"].get("deletionTimestamp"):
                self.finalize(obj)


def rv(obj: Dict[str, Any]) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion", 0))
    except (TypeError, ValueError):
        return 0


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    venv_kubectl = os.path.join(repo, "target", "py", "bin", "kubectl")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dashboard", default=os.environ.get("RAYFORM_RAY_DASHBOARD"),
                    help="Ray dashboard URL (default: $RAYFORM_RAY_DASHBOARD)")
    ap.add_argument("--serve-url", default=os.environ.get("RAYFORM_SERVE_URL"),
                    help="Serve proxy URL, for /-/healthz (default: $RAYFORM_SERVE_URL)")
    ap.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG")
    ap.add_argument("--context", default=None)
    ap.add_argument("--kubectl", default=venv_kubectl if os.path.exists(venv_kubectl) else "kubectl")
    ap.add_argument("--namespace", "-n", action="append", default=[],
                    help="only RayServices in this namespace (repeatable; default: all)")
    ap.add_argument("--selector", "-l", default=None, help="only RayServices matching this label selector")
    ap.add_argument("--reconcile-delay", type=float, default=1.0,
                    help="seconds between a new generation and the serve PUT (head pod start-up; default 1)")
    ap.add_argument("--poll-interval", type=float, default=0.1,
                    help="seconds between GETs of Serve's app status while something is in progress (default 0.1)")
    ap.add_argument("--resync", type=float, default=10.0, help="seconds between full re-lists (default 10)")
    ap.add_argument("--working-dir", default=None,
                    help="set runtime_env.working_dir of every app to local://<abs DIR>")
    ap.add_argument("--no-inject-http-options", dest="inject_http_options", action="store_false",
                    help="do not add http_options {host,port} from --serve-url to PUTs whose config has none")
    ap.add_argument("--watch-pid", type=int, default=None, help="exit when this PID exits")
    ap.add_argument("--ready-file", default=None, help="write our PID here once watching")
    args = ap.parse_args()
    if not args.dashboard:
        ap.error("--dashboard or RAYFORM_RAY_DASHBOARD is required")

    standin = StandIn(args)

    def on_signal(signum, _frame):
        log(f"signal {signum}; stopping")
        standin.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return standin.run()


if __name__ == "__main__":
    sys.exit(main())
