//! What `/-/routes` means: a map of route prefix to application, matched the
//! way Ray Serve's proxy matches (longest prefix, on a path boundary).

use std::collections::BTreeMap;

pub use crate::stack::serving::prefix_serves;

/// The route (prefix, app) that would serve `path`, if any.
pub fn serving_route(routes: &BTreeMap<String, String>, path: &str) -> Option<(String, String)> {
    routes
        .iter()
        .filter(|(prefix, _)| prefix_serves(prefix, path))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(p, a)| (p.clone(), a.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_path_boundaries() {
        assert!(prefix_serves("/", "/v1/chat/completions"));
        assert!(prefix_serves("/v1", "/v1/chat/completions"));
        assert!(prefix_serves(
            "/v1/chat/completions",
            "/v1/chat/completions"
        ));
        assert!(!prefix_serves("/v1/chat/completions", "/v1/chat"));
        assert!(!prefix_serves("/v", "/v1/chat/completions"));
        assert!(!prefix_serves("/vllm", "/v1/chat/completions"));
    }

    #[test]
    fn the_longest_prefix_wins() {
        let routes: BTreeMap<String, String> =
            [("/".into(), "web".into()), ("/v1".into(), "llm".into())].into();
        assert_eq!(
            serving_route(&routes, "/v1/models"),
            Some(("/v1".into(), "llm".into()))
        );
        let other: BTreeMap<String, String> = [("/other".into(), "llm".into())].into();
        assert_eq!(serving_route(&other, "/v1/chat/completions"), None);
    }
}
