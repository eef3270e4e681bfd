#!/usr/bin/env python3
"""The EC2 instance types the local Karpenter may launch, as its kwok cloud
provider reads them (INSTANCE_TYPES_FILE_PATH: a JSON list of types with
resources and priced offerings). Printed on stdout by scripts/testcluster.

Kept as a table rather than JSON because what matters is reviewable at a
glance: which types have GPUs, how much GPU memory, what they cost. The
shapes and on-demand prices are those of us-east-1 (late 2026); spot is
priced at a fixed fraction of on-demand, which is enough for Karpenter's
cheapest-first choice to behave as it does on EKS.

Every offering carries the labels the AWS provider puts on its nodes
(karpenter.k8s.aws/instance-category, -family, -generation, -size, -cpu,
-memory, and for GPU types -gpu-count, -gpu-name, -gpu-manufacturer,
-gpu-memory in MiB per GPU). The kwok provider registers offering
requirement keys as well-known labels and writes single values onto the
Node, so NodePools and pods select on them exactly as they would on EKS.
"""

import json
import sys

ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]
SPOT_FRACTION = 0.35

# name, vCPU, memory GiB, on-demand $/h, (GPU count, GPU name, MiB per GPU) or None
TYPES = [
    ("c6i.xlarge", 4, 8, 0.17, None),
    ("c6i.2xlarge", 8, 16, 0.34, None),
    ("c6i.4xlarge", 16, 32, 0.68, None),
    ("m6i.xlarge", 4, 16, 0.192, None),
    ("m6i.2xlarge", 8, 32, 0.384, None),
    ("m6i.4xlarge", 16, 64, 0.768, None),
    ("r6i.xlarge", 4, 32, 0.252, None),
    ("r6i.2xlarge", 8, 64, 0.504, None),
    ("g4dn.xlarge", 4, 16, 0.526, (1, "t4", 16384)),
    ("g4dn.2xlarge", 8, 32, 0.752, (1, "t4", 16384)),
    ("g5.xlarge", 4, 16, 1.006, (1, "a10g", 24576)),
    ("g5.2xlarge", 8, 32, 1.212, (1, "a10g", 24576)),
    ("g5.12xlarge", 48, 192, 5.672, (4, "a10g", 24576)),
    ("g6.xlarge", 4, 16, 0.805, (1, "l4", 22888)),
    ("g6.2xlarge", 8, 32, 0.978, (1, "l4", 22888)),
    ("p4d.24xlarge", 96, 1152, 32.773, (8, "a100", 40960)),
]


def labels(name, cpu, mem_gib, gpu):
    family, size = name.split(".")
    out = {
        "karpenter.k8s.aws/instance-category": family[0],
        "karpenter.k8s.aws/instance-family": family,
        "karpenter.k8s.aws/instance-generation": "".join(c for c in family if c.isdigit()),
        "karpenter.k8s.aws/instance-size": size,
        "karpenter.k8s.aws/instance-cpu": str(cpu),
        "karpenter.k8s.aws/instance-memory": str(mem_gib * 1024),
    }
    if gpu:
        count, gpu_name, mib = gpu
        out |= {
            "karpenter.k8s.aws/instance-gpu-count": str(count),
            "karpenter.k8s.aws/instance-gpu-name": gpu_name,
            "karpenter.k8s.aws/instance-gpu-manufacturer": "nvidia",
            "karpenter.k8s.aws/instance-gpu-memory": str(mib),
        }
    return out


def offering(price, capacity_type, zone, extra):
    reqs = {"karpenter.sh/capacity-type": capacity_type, "topology.kubernetes.io/zone": zone} | extra
    return {
        "Price": round(price, 4),
        "Available": True,
        "Requirements": [{"key": k, "operator": "In", "values": [v]} for k, v in reqs.items()],
    }


def instance_type(name, cpu, mem_gib, price, gpu):
    resources = {
        "cpu": str(cpu),
        "memory": f"{mem_gib}Gi",
        "pods": "58" if cpu <= 8 else "234",
        "ephemeral-storage": "20Gi",
    }
    if gpu:
        resources["nvidia.com/gpu"] = str(gpu[0])
    extra = labels(name, cpu, mem_gib, gpu)
    return {
        "name": name,
        "architecture": "amd64",
        "operatingSystems": ["linux"],
        "resources": resources,
        "offerings": [
            offering(p, ct, zone, extra)
            for zone in ZONES
            for ct, p in (("on-demand", price), ("spot", price * SPOT_FRACTION))
        ],
    }


json.dump([instance_type(*t) for t in TYPES], sys.stdout, indent=1)
print()
