//! Which block device holds a node's storage, per AMI family, as Karpenter's
//! AWS provider decides it (its `amifamily` defaults and the instance-type
//! code that reads ephemeral storage, v0.32 through v1.x).
//!
//! Two facts make this more than a lookup: the device differs per family
//! (`/dev/xvdb` on Bottlerocket, `/dev/sda1` on Ubuntu and Windows), and a
//! class's own `blockDeviceMappings` replace the family's defaults entirely,
//! so a list rayform writes must start from those defaults when the class
//! has none, or it drops the volumes the family needs.

use serde_json::{Value, json};

use super::ClassApi;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Al2,
    Al2023,
    Bottlerocket,
    Ubuntu,
    Windows,
    Custom,
}

impl Family {
    /// The family Karpenter resolves for a node class: `amiFamily`, else (v1)
    /// the family of the first alias term; anything else means AL2.
    pub fn of(api: ClassApi, class: &Value) -> Family {
        if let Some(name) = class.pointer("/spec/amiFamily").and_then(Value::as_str) {
            return Family::named(name);
        }
        if api != ClassApi::V1 {
            return Family::Al2;
        }
        class
            .pointer("/spec/amiSelectorTerms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|t| t["alias"].as_str())
            .and_then(|alias| alias.split('@').next())
            .map_or(Family::Al2, |f| match f {
                "al2023" => Family::Al2023,
                "bottlerocket" => Family::Bottlerocket,
                f if f.starts_with("windows") => Family::Windows,
                _ => Family::Al2,
            })
    }

    fn named(name: &str) -> Family {
        match name {
            "AL2023" => Family::Al2023,
            "Bottlerocket" => Family::Bottlerocket,
            "Ubuntu" => Family::Ubuntu,
            "Custom" => Family::Custom,
            n if n.starts_with("Windows") => Family::Windows,
            _ => Family::Al2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Al2 => "AL2",
            Family::Al2023 => "AL2023",
            Family::Bottlerocket => "Bottlerocket",
            Family::Ubuntu => "Ubuntu",
            Family::Windows => "Windows",
            Family::Custom => "Custom",
        }
    }

    /// The device Karpenter reads node storage from; Custom has none.
    pub fn storage_device(self) -> Option<&'static str> {
        match self {
            Family::Al2 | Family::Al2023 => Some("/dev/xvda"),
            Family::Bottlerocket => Some("/dev/xvdb"),
            Family::Ubuntu | Family::Windows => Some("/dev/sda1"),
            Family::Custom => None,
        }
    }

    /// The mappings Karpenter launches with when the class lists none.
    pub fn default_mappings(self) -> Vec<Value> {
        let ebs = |device: &str, size: &str| json!({"deviceName": device, "ebs": {"volumeSize": size, "volumeType": "gp3", "encrypted": true}});
        match self {
            Family::Al2 | Family::Al2023 => vec![ebs("/dev/xvda", "20Gi")],
            Family::Bottlerocket => vec![ebs("/dev/xvda", "4Gi"), ebs("/dev/xvdb", "20Gi")],
            Family::Ubuntu => vec![ebs("/dev/sda1", "20Gi")],
            Family::Windows => vec![ebs("/dev/sda1", "50Gi")],
            Family::Custom => Vec::new(),
        }
    }
}

/// The device to size: the stack's `device`, else the mapping marked
/// `rootVolume` (Karpenter reads capacity from it first), else the family's.
pub fn storage_device(
    family: Family,
    asked: Option<&str>,
    mappings: &[Value],
) -> Result<String, String> {
    if let Some(device) = asked {
        return Ok(device.to_string());
    }
    let root = mappings
        .iter()
        .find(|m| m["rootVolume"] == json!(true))
        .and_then(|m| m["deviceName"].as_str());
    if let Some(device) = root.or(family.storage_device()) {
        return Ok(device.to_string());
    }
    Err(
        "amiFamily Custom: the AMI's device names are unknown to Karpenter, which counts the last block device mapping as node storage\n  \
         help: set `device` to the AMI's root or data device (e.g. device = \"/dev/xvda\"), or mark that mapping rootVolume: true"
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(spec: Value) -> Value {
        json!({ "spec": spec })
    }

    #[test]
    fn the_family_comes_from_ami_family_else_the_alias_else_al2() {
        let of = |api, spec| Family::of(api, &class(spec));
        assert_eq!(
            of(ClassApi::V1, json!({"amiFamily": "Bottlerocket"})),
            Family::Bottlerocket
        );
        assert_eq!(
            of(
                ClassApi::V1,
                json!({"amiSelectorTerms": [{"alias": "bottlerocket@latest"}]})
            ),
            Family::Bottlerocket
        );
        assert_eq!(
            of(
                ClassApi::V1,
                json!({"amiFamily": "Custom", "amiSelectorTerms": [{"alias": "al2023@latest"}]})
            ),
            Family::Custom
        );
        assert_eq!(
            of(ClassApi::V1beta1, json!({"amiFamily": "Windows2022"})),
            Family::Windows
        );
        assert_eq!(of(ClassApi::V1alpha1, json!({})), Family::Al2);
    }

    #[test]
    fn each_family_sizes_the_device_karpenter_reads_storage_from() {
        let device = |f: Family| storage_device(f, None, &f.default_mappings());
        assert_eq!(device(Family::Al2023).unwrap(), "/dev/xvda");
        assert_eq!(device(Family::Bottlerocket).unwrap(), "/dev/xvdb");
        assert_eq!(device(Family::Ubuntu).unwrap(), "/dev/sda1");
        assert_eq!(device(Family::Windows).unwrap(), "/dev/sda1");
        assert!(device(Family::Custom).unwrap_err().contains("set `device`"));
        let marked = [json!({"deviceName": "/dev/nvme0n1", "rootVolume": true})];
        assert_eq!(
            storage_device(Family::Custom, None, &marked).unwrap(),
            "/dev/nvme0n1"
        );
        assert_eq!(
            storage_device(Family::Custom, Some("/dev/sdb"), &[]).unwrap(),
            "/dev/sdb"
        );
    }
}
