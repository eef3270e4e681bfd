//! rayform: plan/apply/destroy for LLM serving on KubeRay with Karpenter.
//!
//! The pipeline, one module per stage, each handing plain data to the next:
//!
//! 1. [`stack`]: read the TOML stack and its manifests into a [`stack::Stack`]
//!    (no cluster needed; `rayform validate` stops here).
//! 2. [`graph`]: order the resources in a dependency DAG ([`graph::Graph`]).
//! 3. [`desired`]: render the objects rayform will send, reading secret values
//!    and replacing them by keyed fingerprints everywhere else.
//! 4. [`observe`]: ask the cluster what is there ([`observe::World`]): which
//!    Karpenter API it serves, the live objects (a few LIST calls per kind),
//!    and, only where something may change, what a server-side dry run says.
//! 5. [`plan`]: compare desired, state and live into a [`plan::Plan`]: pure,
//!    no cluster calls. Plans can be saved and applied later.
//! 6. [`apply`]: carry out a plan in graph order, recording every finished
//!    resource in the [`state`] through its [`backend`] (a file with a
//!    journal, or a Secret and a Lease in the cluster); destroy is the same
//!    walk backwards, with the exact Karpenter revert computed in [`karpenter`].
//! 7. [`readiness`]: the terminal node: wait until the RayService really
//!    answers on its route.
//!
//! Beside the pipeline, [`doctor`] reads the cluster and the stack before a
//! first apply and says, check by check, whether it can work.
//!
//! [`ops`] joins the stages into what a user asks for (plan, apply, destroy,
//! import, the state commands): the CLI and the integration tests call those.
//!
//! [`cluster`] is the only module that talks to Kubernetes.
//! The library knows nothing of the command line; `src/cli/` does.

pub mod apply;
pub mod backend;
pub mod cluster;
pub mod desired;
pub mod doctor;
pub mod graph;
pub mod karpenter;
pub mod observe;
pub mod ops;
pub mod plan;
pub mod readiness;
pub mod secret;
pub mod stack;
pub mod state;
pub mod target;
pub mod util;

#[cfg(test)]
mod layers;
