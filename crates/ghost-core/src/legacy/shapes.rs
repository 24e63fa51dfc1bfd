//! The legacy shapes that carry edits: the webhook envelope and the `command_patch` block
//! (both with `mutations[]`) and the g2o shape, each read into a v1 patch.

use serde_json::{Map, Value};

use super::{
    Reader, checks, command_list, empty, escape, finish, invalid, legacy_checks, take_str,
};
use crate::ids::TargetName;
use crate::parse::PatchError;
use crate::patch::{Edit, Patch};

impl Reader<'_> {
    /// `mutations[]` of the envelope and command_patch shapes.
    fn mutations(
        &self,
        value: Value,
        pointer: &str,
        target: &TargetName,
        default_path: Option<&str>,
    ) -> Result<Vec<Edit>, PatchError> {
        let Value::Array(items) = value else {
            return Err(invalid(pointer, "expected a list of mutations"));
        };
        let mut edits = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            let at = format!("{pointer}/{index}");
            let Value::Object(mut fields) = item else {
                return Err(invalid(&at, "expected a mutation object"));
            };
            let op = take_str(&mut fields, "op", &at)?;
            let raw_path = match take_str(&mut fields, "path", &at)? {
                Some(path) => path,
                None => default_path
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(&format!("{at}/path"), "missing field `path`"))?,
            };
            let path = self.path(&raw_path, target, &format!("{at}/path"))?;
            let contents = take_str(&mut fields, "contents", &at)?;
            let pattern = take_str(&mut fields, "pattern", &at)?;
            let replacement = take_str(&mut fields, "replacement", &at)?;
            let mode = take_str(&mut fields, "mode", &at)?;
            if let Some(extra) = fields.keys().next() {
                return Err(invalid(
                    &format!("{at}/{}", escape(extra)),
                    format!("unknown mutation field `{extra}`"),
                ));
            }
            let op = op.unwrap_or_else(|| {
                if pattern.is_some() {
                    "replace".to_owned()
                } else {
                    "upsert".to_owned()
                }
            });
            match op.as_str() {
                "upsert" | "write" | "create" => {
                    let contents = contents.ok_or_else(|| {
                        invalid(&format!("{at}/contents"), "missing field `contents`")
                    })?;
                    edits.push(Edit::Write {
                        path: path.clone(),
                        contents,
                    });
                    if let Some(mode) = mode {
                        edits.push(Edit::Chmod { path, mode });
                    }
                }
                "replace" | "patch" => {
                    let search = pattern.ok_or_else(|| {
                        invalid(&format!("{at}/pattern"), "missing field `pattern`")
                    })?;
                    let replace = replacement.ok_or_else(|| {
                        invalid(&format!("{at}/replacement"), "missing field `replacement`")
                    })?;
                    edits.push(Edit::Replace {
                        path,
                        search,
                        replace,
                    });
                }
                "delete" => edits.push(Edit::Delete { path }),
                "chmod" => {
                    let mode =
                        mode.ok_or_else(|| invalid(&format!("{at}/mode"), "missing field `mode`"))?;
                    edits.push(Edit::Chmod { path, mode });
                }
                other => {
                    return Err(invalid(
                        &format!("{at}/op"),
                        format!(
                            "unknown mutation op {other:?}; expected upsert, write, replace, delete or chmod"
                        ),
                    ));
                }
            }
        }
        Ok(edits)
    }

    pub(super) fn envelope(&mut self, mut object: Map<String, Value>) -> Result<Patch, PatchError> {
        let id = self.id(take_str(&mut object, "id", "")?, "/id")?;
        let target = self.target(take_str(&mut object, "target", "")?, "/target")?;
        let target_file = take_str(&mut object, "target_file", "")?;
        let role = take_str(&mut object, "role", "")?;
        let description = take_str(&mut object, "description", "")?;
        let Some(Value::Object(mut inner)) = object.remove("patch") else {
            return Err(invalid(
                "/patch",
                "expected an object with `mutations` or `pattern`",
            ));
        };
        let edits = if let Some(mutations) = inner.remove("mutations") {
            self.mutations(
                mutations,
                "/patch/mutations",
                &target,
                target_file.as_deref(),
            )?
        } else {
            let Some(file) = target_file.as_deref() else {
                return Err(invalid("/target_file", "missing field `target_file`"));
            };
            let path = self.path(file, &target, "/target_file")?;
            let search = take_str(&mut inner, "pattern", "/patch")?
                .ok_or_else(|| invalid("/patch/pattern", "missing field `pattern`"))?;
            let replace = take_str(&mut inner, "replacement", "/patch")?
                .ok_or_else(|| invalid("/patch/replacement", "missing field `replacement`"))?;
            vec![Edit::Replace {
                path,
                search,
                replace,
            }]
        };
        self.ignore_rest(inner, "/patch");
        self.ignore_rest(object, "");
        let description = description
            .or(role.map(|role| format!("legacy {role} patch")))
            .unwrap_or_default();
        finish(Patch {
            description,
            edits,
            ..empty(id, target)
        })
    }

    pub(super) fn command_patch(
        &mut self,
        mut object: Map<String, Value>,
    ) -> Result<Patch, PatchError> {
        let (raw_id, id_pointer) = match take_str(&mut object, "id", "")? {
            Some(id) => (Some(id), "/id"),
            None => (take_str(&mut object, "blockId", "")?, "/blockId"),
        };
        let id = self.id(raw_id, id_pointer)?;
        let target = self.command_target(&mut object)?;
        let description = take_str(&mut object, "description", "")?.unwrap_or_default();
        let edits = match object.remove("mutations") {
            Some(mutations) => self.mutations(mutations, "/mutations", &target, None)?,
            None => Vec::new(),
        };
        let validate = legacy_checks(&mut object)?;
        self.ignore_rest(object, "");
        finish(Patch {
            description,
            edits,
            validate,
            ..empty(id, target)
        })
    }

    /// `target`, else the `TARGET:` prefix of `project`, else the default.
    pub(super) fn command_target(
        &self,
        object: &mut Map<String, Value>,
    ) -> Result<TargetName, PatchError> {
        if let Some(target) = take_str(object, "target", "")? {
            return self.target(Some(target), "/target");
        }
        if let Some(Value::String(project)) = object.get("project")
            && let Some((prefix, _)) = project.split_once(':')
        {
            let prefix = prefix.to_owned();
            object.remove("project");
            return self.target(Some(prefix), "/project");
        }
        self.target(None, "/target")
    }

    pub(super) fn g2o(&mut self, mut object: Map<String, Value>) -> Result<Patch, PatchError> {
        let Some(Value::Object(mut inner)) = object.remove("patch") else {
            return Err(invalid("/patch", "expected an object"));
        };
        let id = self.id(take_str(&mut inner, "id", "/patch")?, "/patch/id")?;
        let target = self.target(take_str(&mut inner, "target", "/patch")?, "/patch/target")?;
        let kind = take_str(&mut inner, "kind", "/patch")?;
        let mut all_commands = Vec::new();
        for key in ["preflight", "execution"] {
            if let Some(value) = inner.remove(key) {
                all_commands.extend(command_list(value, &format!("/patch/{key}"))?);
            }
        }
        let validate = match inner.remove("validation") {
            Some(value) => checks(command_list(value, "/patch/validation")?),
            None => Vec::new(),
        };
        let mut timeout_s = None;
        if let Some(Value::Object(mut patch_options)) = inner.remove("options") {
            if let Some(value) = patch_options.remove("timeoutMs") {
                let Some(ms) = value.as_u64() else {
                    return Err(invalid(
                        "/patch/options/timeoutMs",
                        "expected a whole number of milliseconds",
                    ));
                };
                timeout_s = Some(u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX));
            }
            self.ignore_rest(patch_options, "/patch/options");
        }
        self.ignore_rest(inner, "/patch");
        self.ignore_rest(object, "");
        finish(Patch {
            description: kind.map(|kind| format!("g2o {kind}")).unwrap_or_default(),
            commands: all_commands,
            validate,
            timeout_s,
            ..empty(id, target)
        })
    }
}
