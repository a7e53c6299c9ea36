//! The sort etcd's Range uses for `sort_order`/`sort_target`: Go's `sort.Sort`, a pattern-defeating
//! quicksort that is NOT stable. Keys with equal sort values come back in the order that exact
//! algorithm leaves them in, and clients can see it, so to answer like etcd 3.5.16 (built with Go
//! 1.24) we reproduce the algorithm step for step: the same pivot choices, partition loops,
//! insertion-sort cut-off at 12 elements, heapsort fallback and the same deterministic
//! pattern-breaking shuffle. Any "better" sort would reorder ties differently.

/// Sort `v` exactly as Go's `sort.Sort` would with the given strict "less" relation.
pub(crate) fn go_sort<T, F: Fn(&T, &T) -> bool>(v: &mut [T], less: F) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let limit = usize::BITS - n.leading_zeros();
    let mut s = Sorter { v, less };
    s.pdqsort(0, n, limit);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hint {
    Unknown,
    Increasing,
    Decreasing,
}

/// Below this many elements a range is finished by insertion sort.
const INSERTION_CUTOFF: usize = 12;
/// From this many elements on, pivots are medians of three medians.
const NINTHER_FROM: usize = 50;
/// Every comparison of the pivot choice swapped: the range looks reversed.
const ALL_SWAPPED: usize = 12;
const PARTIAL_INSERTION_STEPS: usize = 5;
/// Partial insertion sort only shifts elements in ranges at least this long.
const PARTIAL_INSERTION_MIN_LEN: usize = 50;

struct Sorter<'a, T, F> {
    v: &'a mut [T],
    less: F,
}

impl<T, F: Fn(&T, &T) -> bool> Sorter<'_, T, F> {
    fn lt(&self, i: usize, j: usize) -> bool {
        (self.less)(&self.v[i], &self.v[j])
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.v.swap(i, j);
    }

    fn insertion_sort(&mut self, a: usize, b: usize) {
        for i in a + 1..b {
            let mut j = i;
            while j > a && self.lt(j, j - 1) {
                self.swap(j, j - 1);
                j -= 1;
            }
        }
    }

    fn sift_down(&mut self, lo: usize, hi: usize, first: usize) {
        let mut root = lo;
        loop {
            let mut child = 2 * root + 1;
            if child >= hi {
                return;
            }
            if child + 1 < hi && self.lt(first + child, first + child + 1) {
                child += 1;
            }
            if !self.lt(first + root, first + child) {
                return;
            }
            self.swap(first + root, first + child);
            root = child;
        }
    }

    fn heap_sort(&mut self, a: usize, b: usize) {
        let hi = b - a;
        for i in (0..=(hi - 1) / 2).rev() {
            self.sift_down(i, hi, a);
        }
        for i in (0..hi).rev() {
            self.swap(a, a + i);
            self.sift_down(0, i, a);
        }
    }

    fn pdqsort(&mut self, mut a: usize, mut b: usize, mut limit: u32) {
        let mut was_balanced = true;
        let mut was_partitioned = true;
        loop {
            let len = b - a;
            if len <= INSERTION_CUTOFF {
                self.insertion_sort(a, b);
                return;
            }
            if limit == 0 {
                self.heap_sort(a, b);
                return;
            }
            if !was_balanced {
                self.break_patterns(a, b);
                limit -= 1;
            }
            let (mut pivot, mut hint) = self.choose_pivot(a, b);
            if hint == Hint::Decreasing {
                self.reverse(a, b);
                pivot = (b - 1) - (pivot - a);
                hint = Hint::Increasing;
            }
            if was_balanced && was_partitioned && hint == Hint::Increasing && self.partial_insertion_sort(a, b) {
                return;
            }
            // The element just before this range is <= everything in it; if it also equals the
            // pivot, the range starts with a run of duplicates: split those off and go on.
            if a > 0 && !self.lt(a - 1, pivot) {
                a = self.partition_equal(a, b, pivot);
                continue;
            }
            let (mid, already) = self.partition(a, b, pivot);
            was_partitioned = already;
            let (left, right) = (mid - a, b - mid);
            let threshold = len / 8;
            if left < right {
                was_balanced = left >= threshold;
                self.pdqsort(a, mid, limit);
                a = mid + 1;
            } else {
                was_balanced = right >= threshold;
                self.pdqsort(mid + 1, b, limit);
                b = mid;
            }
        }
    }

    /// Returns the pivot's final position and whether nothing had to move.
    fn partition(&mut self, a: usize, b: usize, pivot: usize) -> (usize, bool) {
        self.swap(a, pivot);
        // Signed cursors: `j` may step to just below `i`, which for `i == 1` would be 0 - 0 - 1.
        let (mut i, mut j) = (a as isize + 1, b as isize - 1);
        let p = a;
        while i <= j && self.lt(i as usize, p) {
            i += 1;
        }
        while i <= j && !self.lt(j as usize, p) {
            j -= 1;
        }
        if i > j {
            self.swap(j as usize, p);
            return (j as usize, true);
        }
        self.swap(i as usize, j as usize);
        i += 1;
        j -= 1;
        loop {
            while i <= j && self.lt(i as usize, p) {
                i += 1;
            }
            while i <= j && !self.lt(j as usize, p) {
                j -= 1;
            }
            if i > j {
                break;
            }
            self.swap(i as usize, j as usize);
            i += 1;
            j -= 1;
        }
        self.swap(j as usize, p);
        (j as usize, false)
    }

    /// Moves elements equal to the pivot to the front; returns where the greater ones start.
    fn partition_equal(&mut self, a: usize, b: usize, pivot: usize) -> usize {
        self.swap(a, pivot);
        let (mut i, mut j) = (a as isize + 1, b as isize - 1);
        loop {
            while i <= j && !self.lt(a, i as usize) {
                i += 1;
            }
            while i <= j && self.lt(a, j as usize) {
                j -= 1;
            }
            if i > j {
                break;
            }
            self.swap(i as usize, j as usize);
            i += 1;
            j -= 1;
        }
        i as usize
    }

    /// Fixes up a few out-of-order neighbours; true when the range ends up sorted.
    fn partial_insertion_sort(&mut self, a: usize, b: usize) -> bool {
        let mut i = a + 1;
        for _ in 0..PARTIAL_INSERTION_STEPS {
            while i < b && !self.lt(i, i - 1) {
                i += 1;
            }
            if i == b {
                return true;
            }
            if b - a < PARTIAL_INSERTION_MIN_LEN {
                return false;
            }
            self.swap(i, i - 1);
            if i - a >= 2 {
                // Go walks this one down to index 1 of the whole slice, not to `a`; harmless
                // (everything before `a` is already <=), but kept so comparisons match.
                let mut j = i - 1;
                while j >= 1 {
                    if !self.lt(j, j - 1) {
                        break;
                    }
                    self.swap(j, j - 1);
                    j -= 1;
                }
            }
            if b - i >= 2 {
                let mut j = i + 1;
                while j < b {
                    if !self.lt(j, j - 1) {
                        break;
                    }
                    self.swap(j, j - 1);
                    j += 1;
                }
            }
        }
        false
    }

    /// Swaps three middle elements with pseudo-random partners, seeded by the length so that
    /// the outcome is deterministic.
    fn break_patterns(&mut self, a: usize, b: usize) {
        let len = b - a;
        if len < 8 {
            return;
        }
        let mut state = len as u64;
        let mask = (1usize << (usize::BITS - len.leading_zeros())) - 1;
        let first = a + (len / 4) * 2 - 1;
        for idx in first..=first + 2 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut other = (state as usize) & mask;
            if other >= len {
                other -= len;
            }
            self.swap(idx, a + other);
        }
    }

    fn choose_pivot(&mut self, a: usize, b: usize) -> (usize, Hint) {
        let len = b - a;
        let mut swaps = 0;
        let quarter = len / 4;
        let (mut i, mut j, mut k) = (a + quarter, a + quarter * 2, a + quarter * 3);
        if len >= 8 {
            if len >= NINTHER_FROM {
                i = self.median(i - 1, i, i + 1, &mut swaps);
                j = self.median(j - 1, j, j + 1, &mut swaps);
                k = self.median(k - 1, k, k + 1, &mut swaps);
            }
            j = self.median(i, j, k, &mut swaps);
        }
        let hint = match swaps {
            0 => Hint::Increasing,
            ALL_SWAPPED => Hint::Decreasing,
            _ => Hint::Unknown,
        };
        (j, hint)
    }

    /// Index (one of the three) of the median element; counts the order swaps it needed.
    fn median(&self, a: usize, b: usize, c: usize, swaps: &mut usize) -> usize {
        let (a, b) = self.ordered(a, b, swaps);
        let (b, _c) = self.ordered(b, c, swaps);
        let (_a, b) = self.ordered(a, b, swaps);
        b
    }

    fn ordered(&self, a: usize, b: usize, swaps: &mut usize) -> (usize, usize) {
        if self.lt(b, a) {
            *swaps += 1;
            (b, a)
        } else {
            (a, b)
        }
    }

    fn reverse(&mut self, a: usize, b: usize) {
        let (mut i, mut j) = (a, b - 1);
        while i < j {
            self.swap(i, j);
            i += 1;
            j -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keys `prefix` + index with their versions, in key order (as a range reads them).
    fn items(n: usize, version: impl Fn(usize) -> i64) -> Vec<(usize, i64)> {
        (0..n).map(|i| (i, version(i))).collect()
    }

    fn order(mut v: Vec<(usize, i64)>, descend: bool) -> Vec<usize> {
        if descend {
            go_sort(&mut v, |x, y| y.1 < x.1);
        } else {
            go_sort(&mut v, |x, y| x.1 < y.1);
        }
        v.into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn ties_come_out_as_etcd_3_5_16_returns_them_for_30_keys() {
        // Recorded from etcd 3.5.16: keys p10..p39, key p{i} written (i*7)%4+1 times, read with
        // sort_target=VERSION. Indices below are i-10.
        let v = items(30, |i| (((i + 10) * 7) % 4 + 1) as i64);
        let asc = [
            20, 36, 12, 32, 28, 24, 16, 31, 27, 19, 39, 11, 35, 23, 15, 14, 34, 38, 18, 26, 30, 10, 22, 29, 33, 13, 21,
            37, 25, 17,
        ];
        let desc = [
            33, 25, 37, 13, 29, 21, 17, 14, 30, 10, 38, 34, 22, 18, 26, 31, 35, 27, 39, 23, 11, 19, 15, 16, 32, 24, 36,
            12, 20, 28,
        ];
        let shift = |xs: &[usize]| xs.iter().map(|x| x - 10).collect::<Vec<_>>();
        assert_eq!(order(v.clone(), false), shift(&asc));
        assert_eq!(order(v, true), shift(&desc));
    }

    #[test]
    fn ties_come_out_as_etcd_3_5_16_returns_them_for_120_keys() {
        // Recorded from etcd 3.5.16: keys g000..g119, g{i} written (i*37 + i*i%7)%5+1 times.
        let v = items(120, |i| ((i * 37 + (i * i) % 7) % 5 + 1) as i64);
        let asc: Vec<usize> = "22,109,105,103,4,57,39,97,58,94,93,92,59,0,35,62,33,68,27,70,24,23,74,16,63,85,26,86,28,17,67,15,20,50,87,32,61,90,96,98,102,55,52,51,89,25,95,9,48,10,44,43,118,91,54,13,56,19,83,80,60,79,115,45,114,113,78,21,8,108,82,71,72,73,1,106,76,2,111,36,37,3,107,38,84,117,18,14,88,41,12,53,6,49,47,119,31,7,11,99,100,101,5,81,104,77,75,69,29,30,110,66,112,65,64,34,116,40,42,46"
            .split(',').map(|s| s.parse().unwrap()).collect();
        let desc: Vec<usize> = "5,7,116,112,11,64,65,46,66,69,42,40,34,75,31,110,30,29,77,81,104,101,100,99,88,37,82,106,18,107,108,14,76,111,12,73,36,84,38,72,117,41,6,71,119,3,2,47,1,49,53,91,78,118,54,8,56,9,115,114,60,113,10,13,19,48,45,21,95,44,89,43,25,83,80,79,20,17,32,51,55,61,26,63,15,85,86,87,16,28,90,50,52,102,67,98,96,70,105,23,22,94,93,103,109,24,0,68,97,92,39,35,62,27,59,58,57,74,33,4"
            .split(',').map(|s| s.parse().unwrap()).collect();
        assert_eq!(order(v.clone(), false), asc);
        assert_eq!(order(v, true), desc);
    }

    #[test]
    fn small_inputs_are_stable() {
        // Up to 12 elements Go uses insertion sort, so ties keep key order in both directions.
        let v = items(12, |i| (i % 3) as i64);
        assert_eq!(order(v.clone(), false), vec![0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]);
        assert_eq!(order(v, true), vec![2, 5, 8, 11, 1, 4, 7, 10, 0, 3, 6, 9]);
    }

    proptest! {
        #[test]
        fn sorts_anything(mut xs in proptest::collection::vec(0i64..20, 0..400)) {
            let mut expected = xs.clone();
            expected.sort();
            go_sort(&mut xs, |a, b| a < b);
            prop_assert_eq!(xs, expected);
        }

        #[test]
        fn sorts_adversarial_shapes(n in 0usize..600, shape in 0u8..4) {
            let mut xs: Vec<i64> = (0..n as i64).collect();
            match shape {
                0 => xs.reverse(),
                1 => xs.iter_mut().for_each(|x| *x %= 2),
                2 => { let m = xs.len() / 2; xs[m..].reverse(); }
                _ => xs.iter_mut().enumerate().for_each(|(i, x)| *x = ((i * 7919) % 97) as i64),
            }
            let mut expected = xs.clone();
            expected.sort();
            go_sort(&mut xs, |a, b| a < b);
            prop_assert_eq!(xs, expected);
        }
    }
}
