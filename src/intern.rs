//! Names that live as long as the process: experiment and variant names,
//! endpoint addresses and config versions, as `&'static str`.
//!
//! Every request copies several of them into its access record. As
//! `Arc<str>` each copy was an atomic increment and decrement on a count
//! that every worker thread shares, so the cache lines holding those
//! counts moved between cores on every request; a `&'static str` is
//! copied without touching shared memory. A name is stored once however
//! often it is configured, so what stays allocated is one copy of each
//! distinct name this process was ever configured with (a config version
//! per applied change: a few bytes a reload).

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

/// `s`, stored once for the life of the process.
pub(crate) fn intern(s: &str) -> &'static str {
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(&known) = names.get(s) {
        return known;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::intern;

    #[test]
    fn a_name_is_stored_once() {
        let a = intern("ranker-v2");
        let b = intern(&String::from("ranker-v2"));
        assert_eq!(a, "ranker-v2");
        assert!(std::ptr::eq(a, b), "the same name is one allocation");
        assert!(!std::ptr::eq(a, intern("ranker-v3")));
    }
}
