//! Loads a Kubernetes object from a YAML file next to the stack.

use std::path::Path;

/// One object from one YAML document; errors are plain text for the caller to locate.
pub(crate) fn load(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
    let mut docs: Vec<_> = docs.into_iter().filter(|d| !d.is_null()).collect();
    match docs.len() {
        1 => {
            let doc = docs.remove(0);
            if doc.is_object() {
                Ok(doc)
            } else {
                Err(format!(
                    "{} must hold a mapping (a Kubernetes object)",
                    path.display()
                ))
            }
        }
        0 => Err(format!("{} holds no object", path.display())),
        n => Err(format!(
            "{} holds {n} objects; declare one resource per object",
            path.display()
        )),
    }
}
