//! Sums of floats that do not depend on the order of their terms: the exact sum, rounded once
//! (Shewchuk's algorithm, as Python's `math.fsum`). gold/market_daily sums a day's rows, which a
//! rebuild and an update read in different orders; an ordinary sum would differ in the last bits
//! between them, and sorting every day's rows first costs more than the sums.

/// The running exact sum of the terms added so far.
#[derive(Clone, Debug, Default)]
pub struct ExactSum {
    /// Non-overlapping partial sums in increasing magnitude; together they are the exact sum.
    partials: Vec<f64>,
    /// The sum of the non-finite terms (and of partials that overflowed), which poisons the rest.
    non_finite: Option<f64>,
}

impl ExactSum {
    pub fn add(&mut self, term: f64) {
        if !term.is_finite() {
            self.non_finite = Some(self.non_finite.unwrap_or(0.0) + term);
            return;
        }
        let mut x = term;
        let mut kept = 0;
        for index in 0..self.partials.len() {
            let mut y = self.partials[index];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let high = x + y;
            if !high.is_finite() {
                // Beyond f64's range: the sum is that infinity whatever comes next.
                self.non_finite = Some(self.non_finite.unwrap_or(0.0) + high);
                return;
            }
            let low = y - (high - x);
            if low != 0.0 {
                self.partials[kept] = low;
                kept += 1;
            }
            x = high;
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    /// The exact sum rounded to the nearest f64 (ties to even).
    pub fn value(&self) -> f64 {
        if let Some(special) = self.non_finite {
            return special;
        }
        let partials = &self.partials;
        let Some(mut index) = partials.len().checked_sub(1) else {
            return 0.0;
        };
        let mut high = partials[index];
        let mut low = 0.0;
        while index > 0 {
            index -= 1;
            let x = high;
            let y = partials[index];
            high = x + y;
            low = y - (high - x);
            if low != 0.0 {
                break;
            }
        }
        // Round half-even correctly when the rest below `low` pushes past the halfway point.
        if index > 0
            && ((low < 0.0 && partials[index - 1] < 0.0)
                || (low > 0.0 && partials[index - 1] > 0.0))
        {
            let doubled = low * 2.0;
            let x = high + doubled;
            if doubled == x - high {
                high = x;
            }
        }
        high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(terms: &[f64]) -> f64 {
        let mut total = ExactSum::default();
        terms.iter().for_each(|t| total.add(*t));
        total.value()
    }

    #[test]
    fn the_order_of_the_terms_does_not_change_the_sum() {
        let terms = [1e16, 1.0, -1e16, 0.1, 0.2, 0.3, 1e-10, 3.5e15, -7.25];
        let expected = sum(&terms);
        let mut shuffled = terms;
        // Every rotation and the reverse: a naive sum differs between some of them.
        let naive: Vec<f64> = (0..terms.len())
            .map(|k| {
                shuffled.rotate_left(1);
                assert_eq!(sum(&shuffled).to_bits(), expected.to_bits(), "rotation {k}");
                shuffled.iter().sum::<f64>()
            })
            .collect();
        assert!(naive.iter().any(|n| n.to_bits() != expected.to_bits()));
        shuffled.reverse();
        assert_eq!(sum(&shuffled).to_bits(), expected.to_bits());
    }

    #[test]
    fn sums_are_exact_then_rounded_once() {
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(sum(&[0.1; 10]), 1.0);
        assert_eq!(sum(&[1e100, 1.0, -1e100]), 1.0);
        // Python's math.fsum of the same terms.
        assert_eq!(sum(&[0.1, 0.2, 0.3]), 0.6);
        assert_eq!(sum(&[1.0, 1e-16, 1e-16]), 1.0000000000000002);
        assert_eq!(sum(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert!(sum(&[f64::INFINITY, 1.0, f64::NEG_INFINITY]).is_nan());
    }
}
