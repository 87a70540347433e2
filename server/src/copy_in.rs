//! `COPY table [(columns)] FROM STDIN [WITH (FORMAT text|csv, HEADER, DELIMITER 'c', NULL 's')]`.
//!
//! The client's data is gathered until `CopyDone`, parsed, and inserted with ordinary
//! `INSERT` statements (in chunks), so it gets the same type checks, key checks and
//! durability as any other write; the whole copy is acknowledged once its rows are visible.

use std::sync::Arc;

use eddy_common::SqlState;
use sqlparser::ast::{CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement};

use crate::engine::Engine;
use crate::error::{Result, ServerError};
use crate::session::{Session, StatementResult};

/// Rows per `INSERT` the copy is cut into.
const CHUNK_ROWS: usize = 1000;

/// A `COPY ... FROM STDIN` waiting for its data.
#[derive(Debug, Clone)]
pub struct CopyIn {
    table: String,
    columns: Vec<String>,
    csv: bool,
    header: bool,
    delimiter: char,
    null: String,
    data: Vec<u8>,
}

/// The `COPY ... FROM STDIN` in `statement`, if it is one.
///
/// # Errors
/// When the table does not exist or an option is not supported.
pub fn start(engine: &Arc<Engine>, statement: &Statement) -> Result<Option<CopyIn>> {
    let Statement::Copy { source, to: false, target: CopyTarget::Stdin, options, legacy_options, .. } = statement
    else {
        return Ok(None);
    };
    let CopySource::Table { table_name, columns } = source else {
        return Err(ServerError::unsupported("COPY (query) FROM STDIN"));
    };
    let name = eddy_planner::parser::object_name_to_string(table_name);
    let def = engine
        .catalog
        .get(&name)
        .ok_or_else(|| ServerError::new(SqlState::UndefinedTable, format!("relation \"{name}\" does not exist")))?;
    let mut copy = CopyIn {
        table: def.name.clone(),
        columns: columns.iter().map(|c| c.value.clone()).collect(),
        csv: false,
        header: false,
        delimiter: '\t',
        null: "\\N".into(),
        data: Vec::new(),
    };
    let mut delimiter = None;
    let mut null = None;
    for option in options {
        match option {
            CopyOption::Format(f) => match f.value.to_lowercase().as_str() {
                "text" => copy.csv = false,
                "csv" => copy.csv = true,
                other => return Err(ServerError::unsupported(format!("COPY format {other}"))),
            },
            CopyOption::Header(h) => copy.header = *h,
            CopyOption::Delimiter(d) => delimiter = Some(*d),
            CopyOption::Null(n) => null = Some(n.clone()),
            CopyOption::Freeze(_) => {}
            other => return Err(ServerError::unsupported(format!("COPY option {other}"))),
        }
    }
    for option in legacy_options {
        match option {
            CopyLegacyOption::Csv(_) => copy.csv = true,
            CopyLegacyOption::Delimiter(d) => delimiter = Some(*d),
            CopyLegacyOption::Null(n) => null = Some(n.clone()),
            CopyLegacyOption::Header => copy.header = true,
            other => return Err(ServerError::unsupported(format!("COPY option {other}"))),
        }
    }
    if copy.csv {
        copy.delimiter = ',';
        copy.null = String::new();
    }
    copy.delimiter = delimiter.unwrap_or(copy.delimiter);
    copy.null = null.unwrap_or(copy.null);
    Ok(Some(copy))
}

impl CopyIn {
    /// Columns per row, for `CopyInResponse`.
    pub fn column_count(&self, engine: &Engine) -> usize {
        if self.columns.is_empty() {
            engine.catalog.get(&self.table).map_or(0, |d| d.schema.fields().len())
        } else {
            self.columns.len()
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.data.extend_from_slice(data);
    }

    /// Parses the gathered data and inserts it; returns the number of rows.
    ///
    /// # Errors
    /// Malformed data, or whatever the inserts report (type, key, NOT NULL violations).
    pub async fn finish(self, engine: &Arc<Engine>, session: &Arc<Session>) -> Result<usize> {
        let text = String::from_utf8(self.data.clone())
            .map_err(|_| ServerError::new(SqlState::InvalidTextRepresentation, "COPY data is not valid UTF-8"))?;
        let mut rows = if self.csv { self.csv_rows(&text)? } else { self.text_rows(&text) };
        if self.header && !rows.is_empty() {
            rows.remove(0);
        }
        let columns = if self.columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", "))
        };
        let total = rows.len();
        for chunk in rows.chunks(CHUNK_ROWS) {
            let values: Vec<String> = chunk
                .iter()
                .map(|row| {
                    let fields: Vec<String> =
                        row.iter().map(|f| f.as_deref().map_or_else(|| "NULL".to_string(), quote_literal)).collect();
                    format!("({})", fields.join(", "))
                })
                .collect();
            let sql = format!("INSERT INTO {}{columns} VALUES {}", quote_ident(&self.table), values.join(", "));
            for statement in eddy_planner::parser::parse_sql(&sql)? {
                match session.execute(engine, &statement, None).await? {
                    StatementResult::Command { .. } => {}
                    _ => return Err(ServerError::new(SqlState::Internal, "COPY's insert returned rows")),
                }
            }
        }
        Ok(total)
    }

    fn text_rows(&self, text: &str) -> Vec<Vec<Option<String>>> {
        text.lines()
            .take_while(|l| *l != "\\.")
            .filter(|l| !l.is_empty())
            .map(|line| {
                line.split(self.delimiter)
                    .map(|field| if field == self.null { None } else { Some(unescape(field)) })
                    .collect()
            })
            .collect()
    }

    fn csv_rows(&self, text: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut rows = Vec::new();
        let mut row: Vec<Option<String>> = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        let mut chars = text.chars().peekable();
        let end_field = |field: &mut String, was_quoted: &mut bool, row: &mut Vec<Option<String>>| {
            let value = std::mem::take(field);
            row.push(if !*was_quoted && value == self.null { None } else { Some(value) });
            *was_quoted = false;
        };
        while let Some(c) = chars.next() {
            if quoted {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                } else {
                    field.push(c);
                }
            } else if c == '"' {
                quoted = true;
                was_quoted = true;
            } else if c == self.delimiter {
                end_field(&mut field, &mut was_quoted, &mut row);
            } else if c == '\n' {
                end_field(&mut field, &mut was_quoted, &mut row);
                let done = std::mem::take(&mut row);
                let end_marker_or_blank = done.len() == 1 && (done[0].is_none() || done[0].as_deref() == Some("\\."));
                if !end_marker_or_blank {
                    rows.push(done);
                }
            } else if c != '\r' {
                field.push(c);
            }
        }
        if quoted {
            return Err(ServerError::new(SqlState::InvalidTextRepresentation, "unterminated CSV quoted field"));
        }
        if !field.is_empty() || !row.is_empty() {
            end_field(&mut field, &mut was_quoted, &mut row);
            rows.push(row);
        }
        Ok(rows)
    }
}

/// Postgres's text-format escapes (`\t`, `\n`, `\\`, ...).
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(csv: bool) -> CopyIn {
        CopyIn {
            table: "t".into(),
            columns: vec![],
            csv,
            header: false,
            delimiter: if csv { ',' } else { '\t' },
            null: if csv { String::new() } else { "\\N".into() },
            data: vec![],
        }
    }

    #[test]
    fn text_and_csv_rows() -> Result<()> {
        let rows = copy(false).text_rows("1\ta\\tb\n2\t\\N\n\\.\n");
        assert_eq!(rows, vec![vec![Some("1".into()), Some("a\tb".into())], vec![Some("2".into()), None]]);
        let rows = copy(true).csv_rows("1,\"x,\"\"y\"\"\"\n2,\n3,\"\"\n")?;
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), Some("x,\"y\"".into())],
                vec![Some("2".into()), None],
                vec![Some("3".into()), Some(String::new())],
            ]
        );
        Ok(())
    }
}
