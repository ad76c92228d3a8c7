//! Where each value sits in the YAML text, so that errors found after parsing
//! (weights that do not sum to 100, an unknown upstream, ...) can still name a
//! line and column. serde_yaml reports positions for syntax and type errors
//! only; this index is built from yaml-rust2's marked event stream. It also
//! keeps where each mapping key is written, so an unknown key can be named at
//! the key itself rather than at its value.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The line, counted from 1.
    pub line: usize,
    /// The character in the line, counted from 1.
    pub column: usize,
}

/// How many lone `-` values [`PositionIndex::build`] works around.
const MAX_LONE_DASHES: usize = 16;

/// YAML path (`experiments[0].variants[1].weight`) to the position of its value.
#[derive(Debug, Default)]
pub(crate) struct PositionIndex {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl PositionIndex {
    /// Indexes `text`. A document that does not parse is indexed up to its
    /// error; serde_yaml reports that error with its own position.
    pub(crate) fn build(text: &str) -> PositionIndex {
        let mut text = std::borrow::Cow::Borrowed(text);
        // serde_yaml (libyaml) reads a lone `-` in a flow collection
        // (`access_log: { path: - }`, stdout) as the string "-", where
        // yaml-rust2 stops with an error, and every position after it would
        // be lost. Only the shape matters here, so such a `-` is indexed as
        // a one-character scalar instead, and the text parsed again.
        for _ in 0..MAX_LONE_DASHES {
            let mut b = Builder::default();
            let Err(e) = Parser::new_from_str(&text).load(&mut b, false) else {
                return b.into_index();
            };
            let at = text.char_indices().nth(e.marker().index()).map(|(i, _)| i);
            match at.filter(|&i| text[i..].starts_with('-')) {
                Some(i) => text.to_mut().replace_range(i..=i, "_"),
                None => return b.into_index(),
            }
        }
        let mut b = Builder::default();
        let _ = Parser::new_from_str(&text).load(&mut b, false);
        b.into_index()
    }

    /// Where the key of the mapping entry at `path` is written
    /// (`experiments[0].salt` -> the `salt` of `salt: abc`), if it is a
    /// plain key of an indexed mapping.
    pub(crate) fn key(&self, path: &str) -> Option<Position> {
        self.keys.get(path).copied()
    }

    /// The position of `path`, or of its nearest indexed ancestor (a missing
    /// field is reported at the mapping that should hold it).
    pub(crate) fn find(&self, path: &str) -> Position {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.values.get("").copied().unwrap_or_default(),
            }
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    values: HashMap<String, Position>,
    /// Entry path -> position of its key.
    keys: HashMap<String, Position>,
}

impl Builder {
    fn into_index(self) -> PositionIndex {
        PositionIndex {
            values: self.values,
            keys: self.keys,
        }
    }

    /// The path of the value about to arrive, or `None` when a mapping key is due.
    fn value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map { path, key: Some(k) }) => Some(if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            }),
            Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
        }
    }

    /// A value of the top frame is complete: move on to the next key or index.
    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match ev {
            Event::Scalar(s, ..) => match self.value_path() {
                None => {
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(s);
                    }
                    if let Some(p) = self.value_path() {
                        self.keys.insert(p, pos);
                    }
                }
                Some(p) => {
                    self.values.insert(p, pos);
                    self.advance();
                }
            },
            Event::Alias(_) => {
                if let Some(p) = self.value_path() {
                    self.values.insert(p, pos);
                }
                self.advance();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex mapping key is not something a cohort config has;
                // index it under a placeholder so the walk stays aligned.
                let path = self.value_path().unwrap_or_else(|| "?".into());
                self.values.insert(path.clone(), pos);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listen: 127.0.0.1:8080
upstreams:
  old: { url: http://a }
experiments:
  - name: e
    variants:
      - { name: control, upstream: old, weight: 50 }
      - name: treatment
        weight: 60
";

    #[test]
    fn finds_block_and_flow_values() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(idx.find("listen"), Position { line: 1, column: 9 });
        assert_eq!(
            idx.find("upstreams.old.url"),
            Position {
                line: 3,
                column: 15
            }
        );
        assert_eq!(
            idx.find("experiments[0].name"),
            Position {
                line: 5,
                column: 11
            }
        );
        assert_eq!(
            idx.find("experiments[0].variants[0].weight"),
            Position {
                line: 7,
                column: 49
            }
        );
        assert_eq!(
            idx.find("experiments[0].variants[1].weight"),
            Position {
                line: 9,
                column: 17
            }
        );
    }

    #[test]
    fn missing_field_points_at_its_parent() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(
            idx.find("experiments[0].variants[1].upstream"),
            idx.find("experiments[0].variants[1]")
        );
        assert_eq!(idx.find("experiments[0].variants[1]").line, 8);
    }

    #[test]
    fn keys_are_indexed_where_they_are_written() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(idx.key("listen"), Some(Position { line: 1, column: 1 }));
        assert_eq!(
            idx.key("experiments[0].variants[0].weight"),
            Some(Position {
                line: 7,
                column: 41
            })
        );
        assert_eq!(
            idx.key("experiments[0].variants[1].weight"),
            Some(Position { line: 9, column: 9 })
        );
        assert_eq!(idx.key("experiments[0].variants[1].upstream"), None);
    }

    #[test]
    fn a_lone_dash_in_a_flow_mapping_keeps_the_rest_indexed() {
        let doc = "access_log: { path: -, log_unit: hashed }\nlisten: 127.0.0.1:1\nx: [-, { a: - }]\ny: 1\n";
        let idx = PositionIndex::build(doc);
        assert_eq!(
            idx.find("access_log.path"),
            Position {
                line: 1,
                column: 21
            }
        );
        assert_eq!(
            idx.find("access_log.log_unit"),
            Position {
                line: 1,
                column: 34
            }
        );
        assert_eq!(idx.find("listen"), Position { line: 2, column: 9 });
        assert_eq!(
            idx.find("x[1].a"),
            Position {
                line: 3,
                column: 13
            }
        );
        assert_eq!(idx.find("y"), Position { line: 4, column: 4 });
    }
}
