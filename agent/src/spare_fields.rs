//! Header maps of finished messages, kept cleared for the next heads read on the same thread.
//! A request through one hop reads two heads and writes two: without these, each head read
//! allocated a map's two tables and each head written freed them, four of the five
//! allocations of such a request (BENCHMARKS.md, "Header maps kept for the next head").

use std::cell::RefCell;

use http::HeaderMap;

/// Most maps kept per thread: as many heads as a burst of requests reads at once.
const KEPT: usize = 64;
/// A map that grew past room for this many fields, or held more values (those of repeated
/// fields are kept apart, in room of their own), is freed, not kept.
const KEPT_CAPACITY: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `fields` fields: a kept one when there is one.
pub(crate) fn with_capacity(fields: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Keeps `map`, whose message is done with, for a head read later on this thread.
pub(crate) fn give_back(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > KEPT_CAPACITY || map.len() > KEPT_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEPT {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http::header::HOST;

    use super::*;

    #[test]
    fn a_map_given_back_comes_back_empty_with_its_room() {
        let mut map = with_capacity(8);
        map.insert(HOST, HeaderValue::from_static("a"));
        let room = map.capacity();
        give_back(map);
        let again = with_capacity(2);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room, "the kept map, not a new one");
    }

    #[test]
    fn a_map_grown_past_the_bound_is_not_kept() {
        let mut map = HeaderMap::with_capacity(KEPT_CAPACITY * 2);
        map.insert(HOST, HeaderValue::from_static("a"));
        give_back(map);
        assert!(with_capacity(1).capacity() < KEPT_CAPACITY * 2);

        let mut repeated = with_capacity(1);
        for _ in 0..=KEPT_CAPACITY {
            repeated.append(HOST, HeaderValue::from_static("a"));
        }
        give_back(repeated);
        assert!(SPARE.with_borrow(Vec::is_empty), "a map of many values is not kept");
    }
}
