//! Finding the cluster as kubectl does: `--kubeconfig`, else `$KUBECONFIG`
//! or `~/.kube/config`, else the pod's service account, and `--context`
//! checked against the contexts the kubeconfig has, so that a typo is named
//! rather than silently replaced by the current context.

use std::path::{Path, PathBuf};

use kube::Config;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{ClusterError, ConnectOptions};

/// The client configuration as kubectl finds it: `--kubeconfig`, else
/// `$KUBECONFIG` or `~/.kube/config`, else, inside a pod (a CI job in the
/// cluster), the pod's service account. Returns the context used, if any.
pub(super) async fn config(
    options: &ConnectOptions,
) -> Result<(Config, Option<String>), ClusterError> {
    let kubeconfig = match read_kubeconfig(options.kubeconfig.as_deref())? {
        Kubeconfigs::Read(k) => *k,
        Kubeconfigs::None(tried) => {
            if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                return in_cluster(options, &tried);
            }
            return Err(ClusterError::Kubeconfig { message: tried });
        }
    };
    let context = options
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone());
    if let Some(ctx) = &options.context
        && !kubeconfig.contexts.iter().any(|c| &c.name == ctx)
    {
        return Err(ClusterError::UnknownContext {
            context: ctx.clone(),
            available: kubeconfig.contexts.iter().map(|c| c.name.clone()).collect(),
        });
    }
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kubeconfig, &kube_options)
        .await
        .map_err(|e| ClusterError::Kubeconfig {
            message: e.to_string(),
        })?;
    Ok((config, context))
}

/// What the kubeconfig files kubectl would read hold.
enum Kubeconfigs {
    Read(Box<Kubeconfig>),
    /// None of them exists: which were tried.
    None(String),
}

/// The kubeconfig as kubectl reads it: the `--kubeconfig` file alone when
/// given; else the files `$KUBECONFIG` lists that exist, merged (the first
/// to set a key wins), those that do not skipped; else `~/.kube/config`.
fn read_kubeconfig(explicit: Option<&Path>) -> Result<Kubeconfigs, ClusterError> {
    if let Some(path) = explicit {
        return read_kubeconfig_file(path).map(|k| Kubeconfigs::Read(Box::new(k)));
    }
    let listed: Vec<PathBuf> = std::env::var_os("KUBECONFIG")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    let listed: Vec<PathBuf> = listed
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    let (candidates, tried) = if listed.is_empty() {
        let default = std::env::home_dir()
            .map(|h| h.join(".kube").join("config"))
            .into_iter()
            .collect::<Vec<_>>();
        let tried = match default.first() {
            Some(p) => format!("{} does not exist (and KUBECONFIG is not set)", p.display()),
            None => "KUBECONFIG is not set and there is no home directory".to_string(),
        };
        (default, tried)
    } else {
        let names: Vec<String> = listed.iter().map(|p| p.display().to_string()).collect();
        let tried = format!(
            "none of the files KUBECONFIG lists exists (tried {})",
            names.join(", ")
        );
        (listed, tried)
    };
    let mut merged: Option<Kubeconfig> = None;
    for path in candidates.iter().filter(|p| p.exists()) {
        let next = read_kubeconfig_file(path)?;
        merged = Some(match merged {
            None => next,
            Some(first) => first.merge(next).map_err(|e| ClusterError::Kubeconfig {
                message: format!(
                    "cannot merge {} into the files before it: {e}",
                    path.display()
                ),
            })?,
        });
    }
    Ok(merged.map_or(Kubeconfigs::None(tried), |k| Kubeconfigs::Read(Box::new(k))))
}

fn read_kubeconfig_file(path: &Path) -> Result<Kubeconfig, ClusterError> {
    Kubeconfig::read_from(path).map_err(|e| ClusterError::Kubeconfig {
        message: match e {
            // Its own message quotes the path twice over.
            kube::config::KubeconfigError::ReadConfig(io, _) => {
                format!("cannot read {}: {io}", path.display())
            }
            e => format!("cannot read {}: {e}", path.display()),
        },
    })
}

/// The pod's service account, when there is no kubeconfig but a pod's environment.
fn in_cluster(
    options: &ConnectOptions,
    no_kubeconfig: &str,
) -> Result<(Config, Option<String>), ClusterError> {
    if let Some(ctx) = &options.context {
        return Err(ClusterError::Kubeconfig {
            message: format!(
                "--context {ctx} needs a kubeconfig, and there is none ({no_kubeconfig}); inside a pod rayform uses the pod's service account"
            ),
        });
    }
    Config::incluster()
        .map(|c| (c, None))
        .map_err(|e| ClusterError::Kubeconfig {
            message: format!(
                "no kubeconfig ({no_kubeconfig}), and the in-cluster configuration (KUBERNETES_SERVICE_HOST is set) failed: {e}"
            ),
        })
}
