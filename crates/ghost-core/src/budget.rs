//! Reading a JSON or YAML document into a generic value under a budget.
//!
//! YAML aliases are replayed by the deserializer, so a small document can expand without bound
//! (one 200 KB anchor aliased 8,000 times is 1.6 GB). The value is therefore built by our own
//! visitor, which charges every string, key and node against [`ParseBudget::max_bytes`] before
//! it allocates and gives up the moment the total passes it; it also refuses a key that appears
//! twice in one object (JSON and YAML parsers keep the last one silently) and bounds nesting.

mod aliases;

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

pub(crate) use aliases::{ScanLimits, ScanRefusal, scan};

/// How much reading one submitted document may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseBudget {
    /// Largest expanded size, in bytes: every decoded string and key, plus one per node, with
    /// YAML aliases counted each time they are replayed (never more than the JSON form's size).
    pub max_bytes: usize,
    /// Most YAML aliases (`*name`) one document may use.
    pub max_aliases: usize,
    /// Deepest nesting of arrays and objects (for YAML, also checked lexically before parsing).
    pub max_depth: usize,
    /// Most YAML nodes, counted lexically from indicators before parsing: the YAML loader
    /// buffers every event of a document (about 200 bytes each) before the budget sees one.
    pub max_nodes: usize,
}

impl ParseBudget {
    /// Aliases a document may use: patches have no need for many, and each one is a replay.
    pub const DEFAULT_MAX_ALIASES: usize = 1_000;
    /// Nesting depth: the patch model and the legacy shapes need fewer than ten levels.
    pub const DEFAULT_MAX_DEPTH: usize = 64;
    /// YAML nodes: a patch of 2,000 edits has about 10,000; 20,000 buffer about 8 MB of events.
    pub const DEFAULT_MAX_NODES: usize = 20_000;

    /// The budget for documents of at most `max_bytes` (the service's request body limit).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            max_aliases: Self::DEFAULT_MAX_ALIASES,
            max_depth: Self::DEFAULT_MAX_DEPTH,
            max_nodes: Self::DEFAULT_MAX_NODES,
        }
    }
}

/// Why the reader stopped, kept aside because the deserializer flattens errors into text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The expanded document passed a limit of the budget.
    OverBudget(String),
    /// A key appears twice in one object; `pointer` names the second occurrence.
    DuplicateKey {
        /// RFC 6901 pointer of the repeated key.
        pointer: String,
        /// The key.
        key: String,
    },
}

/// One document being read: the budget, what was spent, and the first refusal.
pub(crate) struct Reader<'b> {
    budget: &'b ParseBudget,
    spent: Cell<usize>,
    refusal: RefCell<Option<Refusal>>,
}

impl<'b> Reader<'b> {
    pub(crate) fn new(budget: &'b ParseBudget) -> Self {
        Self {
            budget,
            spent: Cell::new(0),
            refusal: RefCell::new(None),
        }
    }

    /// Expanded bytes charged so far.
    pub(crate) fn spent(&self) -> usize {
        self.spent.get()
    }

    /// The refusal that stopped the reader, if it was one of ours.
    pub(crate) fn refusal(self) -> Option<Refusal> {
        self.refusal.into_inner()
    }

    /// A seed that reads the whole document.
    pub(crate) fn root(&self) -> ValueSeed<'_, 'static> {
        ValueSeed {
            reader: self,
            at: &ROOT,
            depth: 0,
        }
    }

    fn refuse<E: de::Error>(&self, refusal: Refusal) -> E {
        let text = match &refusal {
            Refusal::OverBudget(message) => message.clone(),
            Refusal::DuplicateKey { key, .. } => format!("duplicate key {key:?}"),
        };
        self.refusal.borrow_mut().get_or_insert(refusal);
        E::custom(text)
    }

    /// Charges `cost` bytes, refusing once the total passes the budget.
    fn charge<E: de::Error>(&self, cost: usize) -> Result<(), E> {
        let spent = self.spent.get().saturating_add(cost);
        self.spent.set(spent);
        if spent > self.budget.max_bytes {
            return Err(self.refuse(Refusal::OverBudget(format!(
                "the document expands to more than {} bytes (aliases replayed)",
                self.budget.max_bytes
            ))));
        }
        Ok(())
    }

    fn enter<E: de::Error>(&self, depth: usize) -> Result<usize, E> {
        let inner = depth + 1;
        if inner > self.budget.max_depth {
            return Err(self.refuse(Refusal::OverBudget(format!(
                "the document nests deeper than {} levels",
                self.budget.max_depth
            ))));
        }
        Ok(inner)
    }
}

/// Where a value sits, as a chain to its parent; turned into a pointer only on refusal.
enum At<'p> {
    Root,
    Index(&'p At<'p>, usize),
    Key(&'p At<'p>, &'p str),
}

static ROOT: At<'static> = At::Root;

impl At<'_> {
    fn pointer(&self) -> String {
        match self {
            At::Root => String::new(),
            At::Index(parent, index) => format!("{}/{index}", parent.pointer()),
            At::Key(parent, key) => format!(
                "{}/{}",
                parent.pointer(),
                key.replace('~', "~0").replace('/', "~1")
            ),
        }
    }
}

/// Reads one value at `at`.
pub(crate) struct ValueSeed<'r, 'p> {
    reader: &'r Reader<'r>,
    at: &'p At<'p>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON or YAML value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        self.reader.charge(if value { 4 } else { 5 })?;
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        let number = Number::from(value);
        self.reader.charge(rendered_len(&number))?;
        Ok(Value::Number(number))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        let number = Number::from(value);
        self.reader.charge(rendered_len(&number))?;
        Ok(Value::Number(number))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<Value, E> {
        match i64::try_from(value) {
            Ok(small) => self.visit_i64(small),
            Err(_) => Err(E::custom(format!("integer {value} is out of range"))),
        }
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<Value, E> {
        match u64::try_from(value) {
            Ok(small) => self.visit_u64(small),
            Err(_) => Err(E::custom(format!("integer {value} is out of range"))),
        }
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        match Number::from_f64(value) {
            Some(number) => {
                self.reader.charge(rendered_len(&number))?;
                Ok(Value::Number(number))
            }
            None => self.visit_unit(),
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        self.reader.charge(value.len().saturating_add(1))?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        self.reader.charge(value.len().saturating_add(1))?;
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.reader.charge(4)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.reader.charge(1)?;
        let depth = self.reader.enter(self.depth)?;
        // The size hint is the sender's claim; only a small head start is taken on trust.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        loop {
            let at = At::Index(self.at, items.len());
            let seed = ValueSeed {
                reader: self.reader,
                at: &at,
                depth,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.reader.charge(1)?;
        let depth = self.reader.enter(self.depth)?;
        let mut object = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            reader: self.reader,
            object: &object,
            at: self.at,
        })? {
            let at = At::Key(self.at, &key);
            let value = map.next_value_seed(ValueSeed {
                reader: self.reader,
                at: &at,
                depth,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Bytes `number` takes in JSON (up to 24 for a float), counted without allocating: a number
/// is charged what it will cost once rendered, not the one byte its YAML source may take.
fn rendered_len(number: &Number) -> usize {
    struct Count(usize);
    impl fmt::Write for Count {
        fn write_str(&mut self, text: &str) -> fmt::Result {
            self.0 += text.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into a counter cannot fail.
    let _ = fmt::write(&mut count, format_args!("{number}"));
    count.0
}

/// Reads one object key, refusing it if `object` already has it; charged like a string.
///
/// The check happens inside the key's own deserialization so that the parser's position (and
/// so the error's line:column) is the repeated key's, not the object's.
struct KeySeed<'r, 'o, 'p> {
    reader: &'r Reader<'r>,
    object: &'o Map<String, Value>,
    at: &'p At<'p>,
}

impl KeySeed<'_, '_, '_> {
    fn accept<E: de::Error>(&self, key: &str) -> Result<(), E> {
        self.reader.charge(key.len().saturating_add(1))?;
        if self.object.contains_key(key) {
            return Err(self.reader.refuse(Refusal::DuplicateKey {
                pointer: At::Key(self.at, key).pointer(),
                key: key.to_owned(),
            }));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_, '_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_, '_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        self.accept(key)?;
        Ok(key.to_owned())
    }

    fn visit_string<E: de::Error>(self, key: String) -> Result<String, E> {
        self.accept(&key)?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Format, ParseBudget, PatchError, parse_document};

    const MIB: ParseBudget = ParseBudget {
        max_bytes: 1024 * 1024,
        max_aliases: ParseBudget::DEFAULT_MAX_ALIASES,
        max_depth: ParseBudget::DEFAULT_MAX_DEPTH,
        max_nodes: ParseBudget::DEFAULT_MAX_NODES,
    };

    fn over_budget(body: &str, format: Format, budget: &ParseBudget) -> String {
        match parse_document(body.as_bytes(), format, budget) {
            Err(PatchError::OverBudget { message }) => message,
            other => panic!("expected an over-budget refusal, got {other:?}"),
        }
    }

    fn duplicate(body: &str, format: Format) -> (String, String) {
        match parse_document(body.as_bytes(), format, &MIB) {
            Err(err @ PatchError::DuplicateKey { .. }) => {
                let PatchError::DuplicateKey { first, second, .. } = &err else {
                    unreachable!()
                };
                assert_eq!(first, second, "one object, one pointer");
                (second.clone(), err.to_string())
            }
            other => panic!("expected a duplicate-key refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_anchor_replayed_past_the_budget_is_refused() {
        // Ten aliases of a 200 KB string: few aliases, 2 MB expanded.
        let body = format!(
            "id: p\nblob: &b \"{}\"\nmore: [{}]\n",
            "x".repeat(200_000),
            ["*b"; 10].join(", ")
        );
        let message = over_budget(&body, Format::Yaml, &MIB);
        assert!(
            message.contains("expands to more than 1048576 bytes"),
            "{message}"
        );
        // Nested aliases (a "billion laughs") are charged per replayed node.
        let mut laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
        for level in 1..9 {
            let prev = format!("*a{}", level - 1);
            laughs.push_str(&format!(
                "a{level}: &a{level} [{}]\n",
                vec![prev; 10].join(", ")
            ));
        }
        over_budget(&laughs, Format::Yaml, &MIB);
        // Four levels (10,000 replayed scalars) stay under serde_norway's own repetition limit,
        // so only the visitor's charge can refuse them: its message says so.
        let mut laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
        for level in 1..4 {
            let prev = format!("*a{}", level - 1);
            laughs.push_str(&format!(
                "a{level}: &a{level} [{}]\n",
                vec![prev; 10].join(", ")
            ));
        }
        let message = over_budget(&laughs, Format::Yaml, &ParseBudget::new(2_000));
        assert!(
            message.contains("expands to more than 2000 bytes"),
            "{message}"
        );
        assert!(parse_document(laughs.as_bytes(), Format::Yaml, &MIB).is_ok());
    }

    #[test]
    fn the_issue_document_is_refused_without_expanding_it() {
        // Issue 17: a 543 KB patch, one 200 KB anchor aliased 8,000 times (1.6 GB expanded).
        let name = format!("blob{}", "x".repeat(33));
        let mut body = format!(
            "id: p\ntarget: MAIN\nd: &{name} \"{}\"\nc:\n",
            "y".repeat(200_000)
        );
        for _ in 0..8_000 {
            body.push_str(&format!("  - *{name}\n"));
        }
        let message = over_budget(&body, Format::Yaml, &MIB);
        assert!(message.contains("aliases"), "{message}");
        // Without the alias count, the expanded-size budget alone stops it after ~1 MB.
        let unlimited = ParseBudget {
            max_aliases: usize::MAX,
            ..MIB
        };
        let message = over_budget(&body, Format::Yaml, &unlimited);
        assert!(message.contains("expands to more than"), "{message}");
    }

    #[test]
    fn too_many_aliases_are_refused_before_parsing() {
        let body = format!("a: &a x\nb: [{}]\n", vec!["*a"; 1001].join(", "));
        let message = over_budget(&body, Format::Yaml, &MIB);
        assert!(message.contains("more than 1000 YAML aliases"), "{message}");
        let fine = format!("a: &a x\nb: [{}]\n", vec!["*a"; 1000].join(", "));
        assert!(parse_document(fine.as_bytes(), Format::Yaml, &MIB).is_ok());
    }

    #[test]
    fn size_and_depth_are_bounded() {
        let small = ParseBudget::new(10);
        let message = over_budget("[\"abcdefghijk\"]", Format::Json, &small);
        assert!(message.contains("over the 10 byte limit"), "{message}");
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let message = over_budget(&deep, Format::Json, &MIB);
        assert!(message.contains("deeper than 64"), "{message}");
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_document(ok.as_bytes(), Format::Json, &MIB).is_ok());
    }

    #[test]
    fn numbers_are_charged_what_they_render_to() {
        // 100 aliases of 100 floats: charged one byte each before, 24 once rendered as JSON.
        let body = format!(
            "a: &a [{}]\nb: [{}]\n",
            vec!["-1.2345678901234567e-300"; 100].join(", "),
            vec!["*a"; 100].join(", ")
        );
        let budget = ParseBudget::new(200_000);
        let message = over_budget(&body, Format::Yaml, &budget);
        assert!(message.contains("expands to more than"), "{message}");
        let rendered = serde_json::to_string(&serde_json::json!([-1.2345678901234567e-300]));
        assert_eq!(rendered.expect("json").len() - 2, 24);
    }

    #[test]
    fn json_never_expands_past_its_own_length() {
        let body = br#"{"a":[1,-2,3.5,true,null,"",{}],"b":"\u0041\n","c":{"d":[[]]}}"#;
        let budget = ParseBudget::new(body.len());
        assert!(parse_document(body, Format::Json, &budget).is_ok());
    }

    #[test]
    fn duplicate_keys_name_the_key_and_its_place() {
        let (pointer, message) = duplicate(
            "{\"id\":\"p\",\n \"edits\":[{\"op\":\"write\",\"path\":\"a\",\n \"path\":\"b\"}]}",
            Format::Json,
        );
        assert_eq!(pointer, "/edits/0/path");
        assert!(
            message.contains(
                "duplicate key \"path\": first at \"/edits/0/path\", again at \"/edits/0/path\" (line 3"
            ),
            "{message}"
        );
        let (pointer, message) = duplicate("id: p\ntarget: MAIN\nid: q\n", Format::Yaml);
        assert_eq!(pointer, "/id");
        assert!(message.contains("(line 3, column 1)"), "{message}");
        let (pointer, _) = duplicate("a:\n  b/c: 1\n  b/c: 2\n", Format::Yaml);
        assert_eq!(pointer, "/a/b~1c");
    }
}
