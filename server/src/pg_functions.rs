//! Postgres catalog functions that drivers and psql call and that neither DataFusion nor
//! `datafusion-pg-catalog` provide.
//!
//! Eddy has no comments on objects, no indexes beyond primary keys, no sequences, no
//! overloaded user functions and one schema, so most of these have one honest answer
//! (`NULL`, `true`): what matters to clients is that their catalog queries plan and run.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int32Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

/// A function of any arguments whose answer does not depend on them.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    signature: Signature,
    value: ScalarValue,
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Array(self.value.to_array_of_size(args.number_rows.max(1))?))
    }
}

fn constant(name: &'static str, value: ScalarValue) -> ScalarUDF {
    ScalarUDF::from(Constant { name, signature: Signature::variadic_any(Volatility::Stable), value })
}

/// The OIDs of the built-in types Eddy's columns have, by the names Postgres accepts.
pub fn builtin_type_oid(name: &str) -> Option<i32> {
    let name = name.trim().trim_matches('"').to_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    Some(match name {
        "bool" | "boolean" => 16,
        "bytea" => 17,
        "char" => 18,
        "name" => 19,
        "int8" | "bigint" => 20,
        "int2" | "smallint" => 21,
        "int4" | "integer" | "int" => 23,
        "text" => 25,
        "oid" => 26,
        "json" => 114,
        "float4" | "real" => 700,
        "float8" | "double precision" => 701,
        "varchar" | "character varying" => 1043,
        "date" => 1082,
        "time" | "time without time zone" => 1083,
        "timestamp" | "timestamp without time zone" => 1114,
        "timestamptz" | "timestamp with time zone" => 1184,
        "interval" => 1186,
        "numeric" | "decimal" => 1700,
        "uuid" => 2950,
        "jsonb" => 3802,
        "int2[]" | "_int2" => 1005,
        "int4[]" | "_int4" | "integer[]" => 1007,
        "text[]" | "_text" => 1009,
        "varchar[]" | "_varchar" => 1015,
        "int8[]" | "_int8" | "bigint[]" => 1016,
        "float8[]" | "_float8" => 1022,
        _ => return None,
    })
}

fn strings(arg: &ColumnarValue, n: usize) -> DfResult<StringArray> {
    let array = arg.to_array(n)?;
    let text = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
    Ok(text.as_any().downcast_ref::<StringArray>().cloned().unwrap_or_else(|| StringArray::new_null(n)))
}

/// `to_regtype(name)`: the type's OID, or NULL for a type Eddy does not have (`hstore`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToRegtype {
    signature: Signature,
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let names = strings(&args.args[0], args.number_rows)?;
        let out: Int32Array =
            (0..names.len()).map(|i| if names.is_null(i) { None } else { builtin_type_oid(names.value(i)) }).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `set_config(name, value, is_local)`: returns the value. Settings a client changes this
/// way (asyncpg toggles `jit` around its introspection) have no effect on Eddy.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SetConfig {
    signature: Signature,
}

impl ScalarUDFImpl for SetConfig {
    fn name(&self) -> &str {
        "set_config"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let values = strings(&args.args[1], args.number_rows)?;
        Ok(ColumnarValue::Array(Arc::new(values) as ArrayRef))
    }
}

/// `json_build_object(k1, v1, ...)`: a JSON object as text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

fn json_value(array: &ArrayRef, row: usize) -> serde_json::Value {
    if array.is_null(row) {
        return serde_json::Value::Null;
    }
    match ScalarValue::try_from_array(array, row) {
        Ok(ScalarValue::Boolean(Some(b))) => serde_json::Value::Bool(b),
        Ok(
            v @ (ScalarValue::Int8(_)
            | ScalarValue::Int16(_)
            | ScalarValue::Int32(_)
            | ScalarValue::Int64(_)
            | ScalarValue::UInt8(_)
            | ScalarValue::UInt16(_)
            | ScalarValue::UInt32(_)
            | ScalarValue::UInt64(_)),
        ) => v.to_string().parse::<i64>().map(serde_json::Value::from).unwrap_or(serde_json::Value::Null),
        Ok(ScalarValue::Float64(Some(f))) => serde_json::Value::from(f),
        Ok(v) => serde_json::Value::String(v.to_string()),
        Err(_) => serde_json::Value::Null,
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows.max(1);
        if !args.args.len().is_multiple_of(2) {
            return Err(datafusion::error::DataFusionError::Plan(
                "json_build_object takes an even number of arguments (key, value, ...)".into(),
            ));
        }
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| a.to_array(n)).collect::<DfResult<_>>()?;
        let out: StringArray = (0..n)
            .map(|row| {
                let mut object = serde_json::Map::new();
                for pair in arrays.chunks(2) {
                    let key = match json_value(&pair[0], row) {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    object.insert(key, json_value(&pair[1], row));
                }
                Some(serde_json::Value::Object(object).to_string())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Registers the functions.
pub fn register(ctx: &SessionContext) {
    let null_text = ScalarValue::Utf8(None);
    for name in [
        "obj_description",
        "col_description",
        "shobj_description",
        "pg_get_indexdef",
        "pg_get_serial_sequence",
        "pg_get_function_result",
        "pg_get_function_identity_arguments",
        "pg_get_viewdef",
        "pg_get_triggerdef",
        "pg_get_ruledef",
    ] {
        ctx.register_udf(constant(name, null_text.clone()));
    }
    ctx.register_udf(constant("pg_get_function_arguments", ScalarValue::Utf8(Some(String::new()))));
    for name in ["pg_type_is_visible", "pg_function_is_visible", "pg_collation_is_visible", "pg_opclass_is_visible"] {
        ctx.register_udf(constant(name, ScalarValue::Boolean(Some(true))));
    }
    ctx.register_udf(datafusion::logical_expr::create_udf(
        "pg_table_is_visible",
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            if let ColumnarValue::Scalar(v) = &args[0] {
                let oid = v.cast_to(&DataType::Int32)?;
                let visible = match oid {
                    ScalarValue::Int32(Some(o)) => Some(crate::pg_catalog::table_is_visible(o)),
                    _ => None,
                };
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(visible)));
            }
            let oids = args[0].to_array(1)?;
            let oids = datafusion::arrow::compute::cast(&oids, &DataType::Int32)?;
            let oids = oids.as_any().downcast_ref::<Int32Array>().cloned().unwrap_or_else(|| Int32Array::new_null(0));
            let out: datafusion::arrow::array::BooleanArray =
                oids.iter().map(|o| o.map(crate::pg_catalog::table_is_visible)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    ));
    ctx.register_udf(ScalarUDF::from(ToRegtype { signature: Signature::any(1, Volatility::Stable) }));
    ctx.register_udf(ScalarUDF::from(SetConfig { signature: Signature::any(3, Volatility::Volatile) }));
    ctx.register_udf(ScalarUDF::from(JsonBuildObject { signature: Signature::variadic_any(Volatility::Stable) }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn catalog_functions_answer() -> DfResult<()> {
        let ctx = SessionContext::new();
        register(&ctx);
        let batches = ctx
            .sql(
                "SELECT to_regtype('integer') AS a, to_regtype('hstore') AS b, set_config('jit', 'off', false) AS c, \
                 json_build_object('k', 1, 'v', 'x') AS d, obj_description(1, 'pg_type') AS e, \
                 pg_type_is_visible(5) AS f",
            )
            .await?
            .collect()
            .await?;
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
        assert!(text.contains("| 23 |"), "{text}");
        assert!(text.contains("{\"k\":1,\"v\":\"x\"}"), "{text}");
        assert!(text.contains("| off |"), "{text}");
        assert!(text.contains("| true |"), "{text}");
        Ok(())
    }
}
