//! The dependency graph: which resource must exist before which.
//!
//! Edges come from two places: `depends_on` in the stack, and references the
//! engine can see for itself (a RayService naming a Secret in `secretKeyRef`,
//! Karpenter patches and owned pools before the workload they make room for,
//! an owned pool after its class, a wait after its RayService). Apply walks the graph forwards; destroy walks it backwards.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::stack::{Address, Location, ResourceSpec, ResourceType, Stack};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{location}: dependency cycle: {}", path.iter().map(ToString::to_string).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        location: Location,
        path: Vec<Address>,
    },
}

impl GraphError {
    pub fn location(&self) -> &Location {
        match self {
            GraphError::Cycle { location, .. } => location,
        }
    }
}

/// Why an edge exists; shown as the edge label in `rayform graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    DependsOn,
    References,
    Prepares,
    Waits,
}

impl EdgeKind {
    fn label(self) -> &'static str {
        match self {
            EdgeKind::DependsOn => "depends_on",
            EdgeKind::References => "references",
            EdgeKind::Prepares => "prepares nodes",
            EdgeKind::Waits => "waits for",
        }
    }
}

/// A DAG of resource addresses, with edges pointing from a dependency to its dependent.
#[derive(Debug, Clone)]
pub struct Graph {
    graph: DiGraph<Address, EdgeKind>,
    /// Apply order; destroy is its reverse.
    order: Vec<NodeIndex>,
}

impl Graph {
    /// Builds the graph of a stack, refusing cycles with their whole path.
    pub fn build(stack: &Stack) -> Result<Graph, GraphError> {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for r in &stack.resources {
            index.insert(r.address.clone(), graph.add_node(r.address.clone()));
        }
        let mut edges = BTreeSet::new();
        let mut add = |from: &Address,
                       to: &Address,
                       kind: EdgeKind,
                       graph: &mut DiGraph<Address, EdgeKind>| {
            if let (Some(&a), Some(&b)) = (index.get(from), index.get(to))
                && a != b
                && edges.insert((a, b))
            {
                graph.add_edge(a, b, kind);
            }
        };
        for r in &stack.resources {
            for (dep, _) in &r.depends_on {
                add(dep, &r.address, EdgeKind::DependsOn, &mut graph);
            }
            match &r.spec {
                ResourceSpec::RayService(o) | ResourceSpec::Manifest(o) => {
                    for secret in referenced_secrets(&o.object) {
                        add(
                            &Address::new(ResourceType::Secret, secret),
                            &r.address,
                            EdgeKind::References,
                            &mut graph,
                        );
                    }
                    if matches!(r.spec, ResourceSpec::RayService(_)) {
                        for other in &stack.resources {
                            if other.address.kind.prepares_nodes() {
                                add(&other.address, &r.address, EdgeKind::Prepares, &mut graph);
                            }
                        }
                    }
                }
                ResourceSpec::GpuPool(_) => {
                    // The pool launches from the class of its name: created
                    // after it, and deleted (its nodes drained) before it.
                    add(
                        &Address::new(ResourceType::GpuClass, &r.address.name),
                        &r.address,
                        EdgeKind::References,
                        &mut graph,
                    );
                }
                ResourceSpec::Wait(w) => {
                    add(
                        &Address::new(ResourceType::RayService, &w.rayservice),
                        &r.address,
                        EdgeKind::Waits,
                        &mut graph,
                    );
                }
                _ => {}
            }
        }
        let order = match file_order_toposort(&graph) {
            Ok(order) => order,
            Err(on_cycle) => return Err(cycle_error(stack, &graph, on_cycle)),
        };
        Ok(Graph { graph, order })
    }

    /// Addresses in apply order (dependencies first).
    pub fn apply_order(&self) -> Vec<Address> {
        self.order.iter().map(|&i| self.graph[i].clone()).collect()
    }

    /// Addresses in destroy order (dependents first).
    pub fn destroy_order(&self) -> Vec<Address> {
        let mut order = self.apply_order();
        order.reverse();
        order
    }

    /// Direct dependencies of a resource.
    pub fn dependencies(&self, address: &Address) -> Vec<Address> {
        self.node(address)
            .map(|n| {
                self.graph
                    .neighbors_directed(n, petgraph::Direction::Incoming)
                    .map(|d| self.graph[d].clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Direct dependents of a resource.
    pub fn dependents(&self, address: &Address) -> Vec<Address> {
        self.node(address)
            .map(|n| {
                self.graph
                    .neighbors_directed(n, petgraph::Direction::Outgoing)
                    .map(|d| self.graph[d].clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node of an address; a Provisioner beside a NodePool shares its
    /// intent's node, so it has the intent's edges.
    fn node(&self, address: &Address) -> Option<NodeIndex> {
        let declared = address.declared();
        self.graph
            .node_indices()
            .find(|&i| self.graph[i] == declared)
    }

    /// DOT for the apply order, or with edges reversed for the destroy order.
    pub fn to_dot(&self, destroy: bool) -> String {
        let title = if destroy { "destroy" } else { "apply" };
        let mut out = format!("digraph {title} {{\n  rankdir=LR;\n");
        let order = if destroy {
            self.destroy_order()
        } else {
            self.apply_order()
        };
        for (step, a) in order.iter().enumerate() {
            out.push_str(&format!("  \"{a}\" [label=\"{}. {a}\"];\n", step + 1));
        }
        for e in self.graph.edge_indices() {
            let Some((a, b)) = self.graph.edge_endpoints(e) else {
                continue;
            };
            let (from, to) = if destroy { (b, a) } else { (a, b) };
            out.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
                self.graph[from],
                self.graph[to],
                self.graph[e].label()
            ));
        }
        out.push_str("}\n");
        out
    }
}

/// Kahn's algorithm, taking ready nodes in the order the stack file lists
/// them, so plans read in the order the user wrote (and the guide's steps).
/// On a cycle, returns a node on it.
fn file_order_toposort(graph: &DiGraph<Address, EdgeKind>) -> Result<Vec<NodeIndex>, NodeIndex> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| {
            graph
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    // Node indices follow the stack's resource order.
    let mut ready: BinaryHeap<Reverse<NodeIndex>> = graph
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some(Reverse(n)) = ready.pop() {
        order.push(n);
        for next in graph.neighbors(n) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    match graph.node_indices().find(|n| indegree[n.index()] > 0) {
        // Some node never became ready: it sits on (or behind) a cycle; find one on it.
        Some(stuck) => Err(tarjan_scc(graph)
            .into_iter()
            .find(|c| c.len() > 1)
            .and_then(|c| c.first().copied())
            .unwrap_or(stuck)),
        None => Ok(order),
    }
}

/// Names of Secrets an object refers to anywhere in its body (env, envFrom, volumes).
pub fn referenced_secrets(object: &serde_json::Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    fn walk(v: &serde_json::Value, found: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    match (k.as_str(), child) {
                        ("secretKeyRef" | "secretRef", serde_json::Value::Object(r)) => {
                            if let Some(n) = r.get("name").and_then(|n| n.as_str()) {
                                found.insert(n.to_string());
                            }
                        }
                        ("secret", serde_json::Value::Object(r)) => {
                            if let Some(n) = r.get("secretName").and_then(|n| n.as_str()) {
                                found.insert(n.to_string());
                            }
                        }
                        _ => {}
                    }
                    walk(child, found);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, found)),
            _ => {}
        }
    }
    walk(object, &mut found);
    found
}

/// Turns petgraph's "some node is on a cycle" into the cycle itself, located
/// at the `depends_on` entry that closes it.
fn cycle_error(
    stack: &Stack,
    graph: &DiGraph<Address, EdgeKind>,
    on_cycle: NodeIndex,
) -> GraphError {
    let scc = tarjan_scc(graph)
        .into_iter()
        .find(|c| c.contains(&on_cycle))
        .unwrap_or_else(|| vec![on_cycle]);
    let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
    // Walk inside the component from the node petgraph named until we come back.
    let mut path = vec![on_cycle];
    let mut seen = BTreeSet::from([on_cycle]);
    let mut current = on_cycle;
    loop {
        let next = graph
            .neighbors(current)
            .filter(|n| members.contains(n))
            .find(|n| *n == on_cycle || !seen.contains(n));
        match next {
            Some(n) if n == on_cycle => {
                path.push(n);
                break;
            }
            Some(n) => {
                seen.insert(n);
                path.push(n);
                current = n;
            }
            None => {
                path.push(on_cycle);
                break;
            }
        }
    }
    // Edges run from dependency to dependent; read backwards, the path says
    // "a depends on b depends on a", which is how the user wrote it.
    let path: Vec<Address> = path.into_iter().rev().map(|i| graph[i].clone()).collect();
    // Point at a depends_on entry on the cycle, where the user can break it.
    let location = path
        .windows(2)
        .find_map(|w| {
            stack.get(&w[0]).and_then(|r| {
                r.depends_on
                    .iter()
                    .find(|(d, _)| d == &w[1])
                    .map(|(_, l)| l.clone())
            })
        })
        .or_else(|| stack.get(&path[0]).map(|r| r.location.clone()))
        .unwrap_or_else(|| Location {
            file: stack.file.clone(),
            line: 1,
            column: 1,
        });
    GraphError::Cycle { location, path }
}
