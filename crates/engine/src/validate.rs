//! What the engine checks before a commit: that the output has the schema it must have (declared
//! in code, or inferred on the first build and then locked while the code version stays) and
//! what the asset's checks say of it.

use quantlens_lake::arrow::array::{Array, RecordBatch};
use quantlens_lake::arrow::datatypes::SchemaRef;
use quantlens_lake::At;
use quantlens_runs::CheckResult;

use crate::{Asset, AssetContext, AssetError, OutputSchema};

/// Folds the verdicts on one more piece of output into those on the pieces before: a check
/// passes if it passed on every piece, and a failure keeps the first failing piece's detail
/// (saying so when later pieces fail too).
pub(crate) fn merge_checks(so_far: &mut Vec<CheckResult>, piece: Vec<CheckResult>) {
    const MORE: &str = " (in the first failing piece of the output; later pieces fail too)";
    if so_far.is_empty() {
        *so_far = piece;
        return;
    }
    for (earlier, later) in so_far.iter_mut().zip(piece) {
        if earlier.passed && !later.passed {
            *earlier = later;
        } else if !earlier.passed && !later.passed && !earlier.detail.ends_with(MORE) {
            earlier.detail.push_str(MORE);
        }
    }
}

pub(crate) fn run_checks(asset: &Asset, batches: &[RecordBatch]) -> Vec<CheckResult> {
    asset
        .checks
        .iter()
        .map(|check| {
            let (passed, detail) = match (check.run)(batches) {
                Ok(detail) => (true, detail),
                Err(detail) => (false, detail),
            };
            CheckResult {
                name: check.name.clone(),
                passed,
                blocking: check.blocking,
                detail,
            }
        })
        .collect()
}

/// Where the schema an output must match comes from, as the error messages say it.
const DECLARED: &str = "the asset declares";
const LOCKED: &str = "the table holds (an inferred schema stays locked until the asset's code \
                      changes)";

/// The schema `batches` must have, and where it comes from: the declared one; or for an inferred
/// schema the table's own while the code version that wrote it is this one (the lock), and the
/// output's when the table is new or the code changed.
pub(crate) async fn expected_schema(
    asset: &Asset,
    context: &AssetContext,
    batches: &[RecordBatch],
) -> Result<(SchemaRef, &'static str), AssetError> {
    if let OutputSchema::Declared(schema) = &asset.schema {
        return Ok((schema.clone(), DECLARED));
    }
    if let Some(table) = context.lake.load(&context.key, At::Latest).await? {
        let lineage = table.lineage().await?;
        if lineage.is_some_and(|l| l.code_version == context.code_version) {
            return Ok((table.arrow_schema()?, LOCKED));
        }
    }
    let first = batches.first().ok_or_else(|| {
        AssetError::data(format!(
            "`{}` produced no batch to infer its schema from",
            context.key
        ))
    })?;
    Ok((first.schema(), DECLARED))
}

/// Output must match the expected schema column for column; a non-nullable column may hold no
/// nulls. `origin` says where the expected schema comes from.
pub(crate) fn check_schema(
    key: &str,
    declared: &SchemaRef,
    origin: &str,
    batches: &[RecordBatch],
) -> Result<(), AssetError> {
    for batch in batches {
        let actual = batch.schema();
        let names = |s: &SchemaRef| {
            s.fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        };
        if names(&actual) != names(declared) {
            return Err(AssetError::data(format!(
                "`{key}` produced columns [{}] but {origin} [{}]",
                names(&actual).join(", "),
                names(declared).join(", ")
            )));
        }
        for (index, field) in declared.fields().iter().enumerate() {
            let column = batch.column(index);
            if column.data_type() != field.data_type() {
                return Err(AssetError::data(format!(
                    "`{key}` column `{}` is {} but {origin} {}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                )));
            }
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(AssetError::data(format!(
                    "`{key}` column `{}` holds {} null(s) but is declared non-nullable",
                    field.name(),
                    column.null_count()
                )));
            }
        }
    }
    Ok(())
}
