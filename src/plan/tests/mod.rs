//! The planner's decisions, tested without a cluster. Each test states a
//! stack, what the state recorded and what observation found (live objects,
//! dry runs, Karpenter objects), and compares the change the plan makes of
//! it: the action, the reasons, the exact error a user reads. The stack goes
//! through the real parser, graph and renderer; only the cluster is left
//! out, as `plan::build` is pure over the observed [`crate::observe::World`].
//!
//! By theme: `objects` (what rayform creates and owns), `ownership` (what is
//! not, or no longer, this state's), `karpenter` (patches, reverts, floors),
//! `scope` (--target, --refresh-only, destroy, ordering, saved plans),
//! `provisioner` (Karpenter v0.32's Provisioner beside a NodePool), `render`
//! (snapshots of the text and JSON a user and a machine read).

mod builder;
mod karpenter;
mod objects;
mod ownership;
mod provisioner;
mod render;
mod scope;
