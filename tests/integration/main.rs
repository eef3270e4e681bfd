//! rayform's integration tests: one binary (one link step on a 2-core box).
//!
//! Tests that need Kubernetes run against a real kube-apiserver + etcd
//! (`scripts/testcluster`), one per Karpenter profile, started on first use
//! or reused from `RAYFORM_TEST_KUBECONFIG_<PROFILE>`. Each test works in its
//! own namespace and on its own copies of the Karpenter objects, so tests run
//! in parallel and leave no trace in each other.

mod support;

mod automode;
mod cli;
mod cluster;
mod crash;
mod doctor;
mod drift;
mod fault_proxy;
mod gpu_pools;
mod karpenter;
mod karpenter_live;
mod karpenter_patch;
mod karpenter_releases;
mod lock;
mod namespaces;
mod no_panic;
mod ops;
mod ownership;
mod readiness;
mod redaction;
mod rollout;
mod roundtrip;
mod saved_plans;
mod secrets;
mod state_cli;
mod state_lock;
mod state_store;
mod terminal;
mod usage;
mod validate;
mod wait_account;
