//! A small layered (left-to-right) graph layout, pure: callers on the left of whom they
//! call. Cycles are broken by leaving out the edges that close them (found by a depth-first
//! walk), nodes are put in the layer of their longest path from a node nobody calls, and
//! each layer is ordered by the mean row of its neighbours (a few sweeps each way), so that
//! edges cross less.

/// Where each node goes: its layer (column) and row within the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Per node (by index): (layer, row).
    pub positions: Vec<(usize, usize)>,
    pub layers: usize,
    /// Rows of the tallest layer.
    pub rows: usize,
}

/// Sweeps of the ordering heuristic (each one down and up).
const SWEEPS: usize = 4;

/// Lays out `n` nodes joined by `edges` (source, destination), indices below `n`.
pub fn layout(n: usize, edges: &[(usize, usize)]) -> Layout {
    let forward = acyclic(n, edges);
    let layer = longest_path_layers(n, &forward);
    let layers = layer.iter().copied().max().map_or(0, |l| l + 1);
    let mut by_layer: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for (v, &l) in layer.iter().enumerate() {
        by_layer[l].push(v);
    }
    let mut row = vec![0usize; n];
    let place = |by_layer: &[Vec<usize>], row: &mut [usize]| {
        for nodes in by_layer {
            for (r, &v) in nodes.iter().enumerate() {
                row[v] = r;
            }
        }
    };
    place(&by_layer, &mut row);
    let (mut preds, mut succs) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    for &(a, b) in edges.iter().filter(|(a, b)| a != b && *a < n && *b < n) {
        succs[a].push(b);
        preds[b].push(a);
    }
    for _ in 0..SWEEPS {
        for l in 1..layers {
            order_by_barycenter(&mut by_layer[l], &preds, &row);
            place(&by_layer, &mut row);
        }
        for l in (0..layers.saturating_sub(1)).rev() {
            order_by_barycenter(&mut by_layer[l], &succs, &row);
            place(&by_layer, &mut row);
        }
    }
    let rows = by_layer.iter().map(Vec::len).max().unwrap_or(0);
    Layout { positions: (0..n).map(|v| (layer[v], row[v])).collect(), layers, rows }
}

/// The edges that keep the graph acyclic: those that close no cycle in a depth-first walk
/// from each node in index order (self-loops are left out too).
fn acyclic(n: usize, edges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = vec![Vec::new(); n];
    for &(a, b) in edges.iter().filter(|(a, b)| a != b && *a < n && *b < n) {
        out[a].push(b);
    }
    // 0: not seen, 1: on the walk's path, 2: done.
    let mut state = vec![0u8; n];
    let mut kept = Vec::new();
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        // An explicit stack of (node, next edge to follow): no recursion depth to bound.
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(top) = stack.last_mut() {
            let (v, next) = *top;
            if let Some(&w) = out[v].get(next) {
                top.1 += 1;
                match state[w] {
                    0 => {
                        kept.push((v, w));
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                    2 => kept.push((v, w)),
                    // Back to a node on the path: this edge closes a cycle.
                    _ => {}
                }
            } else {
                state[v] = 2;
                stack.pop();
            }
        }
    }
    kept
}

/// Each node's layer: the length of the longest path to it from a node with no callers.
fn longest_path_layers(n: usize, dag: &[(usize, usize)]) -> Vec<usize> {
    let mut indegree = vec![0usize; n];
    let mut out = vec![Vec::new(); n];
    for &(a, b) in dag {
        out[a].push(b);
        indegree[b] += 1;
    }
    let mut layer = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&v| indegree[v] == 0).collect();
    while let Some(v) = ready.pop() {
        for &w in &out[v] {
            layer[w] = layer[w].max(layer[v] + 1);
            indegree[w] -= 1;
            if indegree[w] == 0 {
                ready.push(w);
            }
        }
    }
    layer
}

/// Orders a layer by the mean row of each node's neighbours in `adjacent`; a node with none
/// keeps its own row as its key. Stable, so ties keep their order.
fn order_by_barycenter(nodes: &mut [usize], adjacent: &[Vec<usize>], row: &[usize]) {
    let key = |v: usize| -> f64 {
        let ns = &adjacent[v];
        if ns.is_empty() {
            row[v] as f64
        } else {
            ns.iter().map(|&u| row[u] as f64).sum::<f64>() / ns.len() as f64
        }
    };
    nodes.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_come_before_whom_they_call() {
        // productpage → reviews → ratings, productpage → details.
        let l = layout(4, &[(0, 1), (1, 2), (0, 3)]);
        assert_eq!(l.layers, 3);
        assert_eq!(l.positions[0].0, 0);
        assert_eq!(l.positions[1].0, 1);
        assert_eq!(l.positions[2].0, 2);
        assert_eq!(l.positions[3].0, 1);
        assert_eq!(l.rows, 2);
    }

    #[test]
    fn a_cycle_is_broken_and_every_node_placed_once() {
        let l = layout(3, &[(0, 1), (1, 2), (2, 0), (1, 1)]);
        assert_eq!(l.layers, 3);
        let mut seen: Vec<(usize, usize)> = l.positions.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "no two nodes share a place: {:?}", l.positions);
    }

    #[test]
    fn ordering_uncrosses_two_parallel_chains() {
        // a0 → b1, a1 → b0: ordered by their callers, b1 moves above b0.
        let l = layout(4, &[(0, 3), (1, 2)]);
        assert_eq!(l.positions[0], (0, 0));
        assert_eq!(l.positions[3].1, 0, "{:?}", l.positions);
        assert_eq!(l.positions[2].1, 1, "{:?}", l.positions);
    }

    #[test]
    fn two_hundred_nodes_lay_out_quickly() {
        let edges: Vec<(usize, usize)> =
            (0..200).flat_map(|i| [(i, (i * 7 + 3) % 200), (i, (i + 1) % 200)]).collect();
        let l = layout(200, &edges);
        assert_eq!(l.positions.len(), 200);
        let placed: std::collections::BTreeSet<_> = l.positions.iter().collect();
        assert_eq!(placed.len(), 200);
    }
}
