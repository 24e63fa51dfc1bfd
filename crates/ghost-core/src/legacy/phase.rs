//! Prose "phase" patches (notes, phases, executionSteps): instructions, not edits, so they
//! become one agent task whose lines are the notes, the steps and every phase's sections.

use serde_json::{Map, Value};

use super::{Reader, empty, finish, invalid, legacy_checks, prose, take_str};
use crate::ids::PatchId;
use crate::parse::PatchError;
use crate::patch::{AgentTask, Patch, Priority};

/// The lines of the agent's task, and whether one of them instructs anything: headings alone
/// (`{"executionSteps":[]}`, `{"phases":[{}]}`, `{"notes":""}`) ask for nothing.
#[derive(Default)]
struct Task {
    lines: Vec<String>,
    instructed: bool,
}

impl Task {
    /// `heading:` then every line as a bullet, both behind `indent`; a line that is not blank
    /// instructs when `instructs`.
    fn bullets(&mut self, heading: &str, indent: &str, lines: Vec<String>, instructs: bool) {
        if instructs {
            self.instructed |= lines.iter().any(|line| !line.trim().is_empty());
        }
        self.lines.push(format!("{indent}{heading}:"));
        self.lines
            .extend(lines.into_iter().map(|line| format!("{indent}- {line}")));
    }

    /// Every phase as `Phase n: title` with its sections; the patch's priority is the first
    /// phase's.
    fn phases(&mut self, phases: &[Value]) -> Result<Priority, PatchError> {
        let mut priority = Priority::Normal;
        for (index, phase) in phases.iter().enumerate() {
            let Some(phase) = phase.as_object() else {
                return Err(invalid(
                    &format!("/phases/{index}"),
                    "expected a phase object",
                ));
            };
            let title = phase
                .get("task")
                .or_else(|| phase.get("section"))
                .map(prose)
                .unwrap_or_default()
                .join(" ");
            self.instructed |= !title.trim().is_empty();
            self.lines.push(format!("Phase {}: {title}", index + 1));
            if index == 0
                && let Some(Value::String(level)) = phase.get("priority")
            {
                priority = match level.as_str() {
                    "high" | "critical" => Priority::High,
                    "low" => Priority::Low,
                    _ => Priority::Normal,
                };
            }
            for (key, heading) in [
                ("actions", "Actions"),
                ("executionSteps", "Steps"),
                ("validation", "Check"),
                ("rollbackPlan", "Rollback plan"),
            ] {
                if let Some(value) = phase.get(key) {
                    self.bullets(heading, "  ", prose(value), true);
                }
            }
        }
        Ok(priority)
    }
}

impl Reader<'_> {
    /// A phase patch as an agent task.
    pub(super) fn phase(&mut self, mut object: Map<String, Value>) -> Result<Patch, PatchError> {
        let notes = object
            .remove("notes")
            .map(|v| prose(&v))
            .unwrap_or_default();
        let id = self.phase_id(&mut object, &notes)?;
        let target = self.command_target(&mut object)?;
        let mut description = take_str(&mut object, "description", "")?.unwrap_or_default();
        if let Some(goal) = notes.iter().find_map(|note| note.strip_prefix("GOAL:"))
            && description.is_empty()
        {
            description = goal.trim().to_owned();
        }
        let mut task = Task::default();
        if !notes.is_empty() {
            task.bullets("Notes", "", notes, true);
        }
        if let Some(steps) = object.remove("executionSteps") {
            task.bullets("Steps", "", prose(&steps), true);
        }
        let priority = match object.remove("phases") {
            Some(Value::Array(phases)) => task.phases(&phases)?,
            _ => Priority::Normal,
        };
        for (key, heading) in [
            ("validationGates", "Validation gates"),
            ("successCriteria", "Success criteria"),
        ] {
            if let Some(value) = object.remove(key) {
                task.bullets(heading, "", prose(&value), false);
            }
        }
        if !task.instructed {
            return Err(invalid(
                "/phases",
                "a phase patch needs at least one non-blank line of notes, phases or \
                 executionSteps: the ones given are empty or blank, so there are no instructions",
            ));
        }
        let validate = legacy_checks(&mut object)?;
        self.ignore_rest(object, "");
        finish(Patch {
            description,
            priority,
            validate,
            agent: Some(AgentTask {
                task: task.lines.join("\n"),
            }),
            ..empty(id, target)
        })
    }

    /// The id: `id`, else `blockId`, else the `PATCH NAME:` note, else derived.
    fn phase_id(
        &mut self,
        object: &mut Map<String, Value>,
        notes: &[String],
    ) -> Result<PatchId, PatchError> {
        let named = notes.iter().find_map(|note| {
            note.strip_prefix("PATCH NAME:")
                .map(|name| name.trim().to_owned())
        });
        let (raw_id, id_pointer) = match take_str(object, "id", "")? {
            Some(id) => (Some(id), "/id"),
            None => match take_str(object, "blockId", "")? {
                Some(id) => (Some(id), "/blockId"),
                None => (named, "/notes"),
            },
        };
        self.id(raw_id, id_pointer)
    }
}
