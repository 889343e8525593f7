//! Asset checks: named predicates over an asset's freshly computed batches, run before the commit.
//! A failing blocking check stops the commit (the table stays at its previous version and
//! downstream is skipped); a failing non-blocking check is recorded as a warning.

use std::sync::Arc;

use quantlens_lake::arrow::array::RecordBatch;

/// Returns `Err(detail)` when the check fails, `Ok(detail)` with a short summary when it passes.
pub type CheckFn = Arc<dyn Fn(&[RecordBatch]) -> Result<String, String> + Send + Sync>;

#[derive(Clone)]
pub struct Check {
    pub name: String,
    pub blocking: bool,
    pub run: CheckFn,
}

impl Check {
    pub fn blocking(
        name: &str,
        run: impl Fn(&[RecordBatch]) -> Result<String, String> + Send + Sync + 'static,
    ) -> Check {
        Check {
            name: name.to_string(),
            blocking: true,
            run: Arc::new(run),
        }
    }

    pub fn warning(
        name: &str,
        run: impl Fn(&[RecordBatch]) -> Result<String, String> + Send + Sync + 'static,
    ) -> Check {
        Check {
            name: name.to_string(),
            blocking: false,
            run: Arc::new(run),
        }
    }
}
