//! Hand-written `Deserialize` for [`Edit`]: fields are typed by name, so every value is read
//! in place and path-tracking deserializers report e.g. `/edits/3/path`, not just `/edits/3`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::ids::RelPath;
use crate::patch::Edit;

pub(crate) const OPS: &[&str] = &[
    "write", "replace", "diff", "delete", "rename", "chmod", "mkdir",
];
const FIELDS: &[&str] = &[
    "op", "path", "contents", "search", "replace", "diff", "from", "to", "mode",
];

#[derive(Default)]
struct Fields {
    op: Option<String>,
    path: Option<RelPath>,
    contents: Option<String>,
    search: Option<String>,
    replace: Option<String>,
    diff: Option<String>,
    from: Option<RelPath>,
    to: Option<RelPath>,
    mode: Option<String>,
}

impl Fields {
    /// Names of the fields that are present.
    fn present(&self) -> Vec<&'static str> {
        let flags = [
            ("path", self.path.is_some()),
            ("contents", self.contents.is_some()),
            ("search", self.search.is_some()),
            ("replace", self.replace.is_some()),
            ("diff", self.diff.is_some()),
            ("from", self.from.is_some()),
            ("to", self.to.is_some()),
            ("mode", self.mode.is_some()),
        ];
        flags
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}

fn take<T, E: de::Error>(slot: Option<T>, op: &str, name: &str) -> Result<T, E> {
    slot.ok_or_else(|| E::custom(format!("missing field `{name}` for op `{op}`")))
}

struct EditVisitor;

impl<'de> Visitor<'de> for EditVisitor {
    type Value = Edit;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an edit object with an `op` field")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Edit, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<String>()? {
            let duplicate = match key.as_str() {
                "op" => fields.op.replace(map.next_value()?).is_some(),
                "path" => fields.path.replace(map.next_value()?).is_some(),
                "contents" => fields.contents.replace(map.next_value()?).is_some(),
                "search" => fields.search.replace(map.next_value()?).is_some(),
                "replace" => fields.replace.replace(map.next_value()?).is_some(),
                "diff" => fields.diff.replace(map.next_value()?).is_some(),
                "from" => fields.from.replace(map.next_value()?).is_some(),
                "to" => fields.to.replace(map.next_value()?).is_some(),
                "mode" => fields.mode.replace(map.next_value()?).is_some(),
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            };
            if duplicate {
                return Err(de::Error::custom(format!("duplicate field `{key}`")));
            }
        }
        let Some(op) = fields.op.take() else {
            return Err(de::Error::missing_field("op"));
        };
        let allowed: &[&str] = match op.as_str() {
            "write" => &["path", "contents"],
            "replace" => &["path", "search", "replace"],
            "diff" => &["path", "diff"],
            "delete" | "mkdir" => &["path"],
            "rename" => &["from", "to"],
            "chmod" => &["path", "mode"],
            _ => return Err(de::Error::unknown_variant(&op, OPS)),
        };
        if let Some(extra) = fields
            .present()
            .into_iter()
            .find(|name| !allowed.contains(name))
        {
            return Err(de::Error::custom(format!(
                "field `{extra}` does not belong to op `{op}`, which takes: {}",
                allowed.join(", ")
            )));
        }
        let edit = match op.as_str() {
            "write" => Edit::Write {
                path: take(fields.path, &op, "path")?,
                contents: take(fields.contents, &op, "contents")?,
            },
            "replace" => Edit::Replace {
                path: take(fields.path, &op, "path")?,
                search: take(fields.search, &op, "search")?,
                replace: take(fields.replace, &op, "replace")?,
            },
            "diff" => Edit::Diff {
                path: take(fields.path, &op, "path")?,
                diff: take(fields.diff, &op, "diff")?,
            },
            "delete" => Edit::Delete {
                path: take(fields.path, &op, "path")?,
            },
            "mkdir" => Edit::Mkdir {
                path: take(fields.path, &op, "path")?,
            },
            "rename" => Edit::Rename {
                from: take(fields.from, &op, "from")?,
                to: take(fields.to, &op, "to")?,
            },
            _ => Edit::Chmod {
                path: take(fields.path, &op, "path")?,
                mode: take(fields.mode, &op, "mode")?,
            },
        };
        Ok(edit)
    }
}

impl<'de> Deserialize<'de> for Edit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EditVisitor)
    }
}
