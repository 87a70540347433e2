//! The Postgres client ecosystem against the real binary: psql's meta-commands, psycopg 3
//! (with a SUBSCRIBE loop), psycopg2, asyncpg, SQLAlchemy reflection (tables, views, columns, keys),
//! pg8000, JDBC, and TLS (`--tls-cert`/`--tls-key`) with psql, psycopg 3 and asyncpg.
//!
//! The Python drivers live in a venv made once under `target/clients-venv`; JDBC uses the
//! Debian `libpostgresql-jdbc-java` jar and the machine's JDK (`scripts/setup-client-tests.sh`
//! installs both).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use eddy_sql_tests::TestServer;

const PYTHON_PACKAGES: &[&str] = &["psycopg[binary]>=3.1", "psycopg2-binary", "asyncpg", "sqlalchemy>=2", "pg8000"];
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

async fn seed(server: &TestServer) -> Result<()> {
    let client = server.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE orders (id INT PRIMARY KEY, customer INT NOT NULL, amount NUMERIC, status VARCHAR);
             CREATE MATERIALIZED VIEW revenue AS
               SELECT customer, count(*) AS n, sum(amount) AS total
               FROM orders WHERE status <> 'cancelled' GROUP BY customer;
             CREATE VIEW paid AS SELECT id, customer FROM orders WHERE status = 'paid';
             INSERT INTO orders VALUES (1, 7, 10.5, 'paid'), (2, 7, 3, 'paid');",
        )
        .await?;
    Ok(())
}

/// Tests run as threads of one process; the first to need the venv makes it while the others
/// wait, so no two run `python3 -m venv` on the same directory (which fails on a clean checkout).
static VENV_LOCK: Mutex<()> = Mutex::new(());

/// A venv with every Python driver, made once (pip reads the machine's pip configuration).
fn python() -> Result<PathBuf> {
    let _made_by_one_test_at_a_time = VENV_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/clients-venv");
    let python = venv.join("bin/python");
    let check = "import psycopg, psycopg2, asyncpg, sqlalchemy, pg8000";
    if Command::new(&python).args(["-c", check]).output().is_ok_and(|o| o.status.success()) {
        return Ok(python);
    }
    // `--clear` so a venv left half-made by an interrupted run is rebuilt rather than refused.
    let status = Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv).status()?;
    if !status.success() {
        bail!("creating a Python venv at {} failed", venv.display());
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES)
        .status()?;
    if !status.success() {
        bail!("installing the Python drivers into {} failed", venv.display());
    }
    Ok(python)
}

/// Runs a Python script with the server's URL as its argument; it must print `ok`.
fn run_python(server: &TestServer, what: &str, script: &str) -> Result<()> {
    let out = Command::new(python()?).arg("-c").arg(script).arg(server.url()).arg(server.port.to_string()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stdout.lines().any(|l| l == "ok") {
        bail!("{what} failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.log());
    }
    Ok(())
}

fn psql(server: &TestServer, commands: &[&str]) -> Result<String> {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "root", "-d", "dev", "-X"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.env("PGCONNECT_TIMEOUT", "10").output().context("running psql")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() || !stderr.trim().is_empty() {
        bail!("psql {commands:?} failed: {stdout}\n{stderr}");
    }
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_meta_commands_from_the_research_appendix() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    let expect = |command: &str, needles: &[&str]| -> Result<()> {
        let out = psql(&server, &[command])?;
        for n in needles {
            assert!(out.contains(n), "{command} lacks {n:?}:\n{out}");
        }
        Ok(())
    };
    expect("\\d", &["orders", "revenue", "paid", "materialized view", "view", "table"])?;
    expect("\\dt", &["orders"])?;
    expect("\\dm", &["revenue"])?;
    expect("\\dv", &["paid"])?;
    expect("\\d orders", &["Table \"public.orders\"", "customer", "not null", "numeric"])?;
    expect("\\d+ orders", &["Table \"public.orders\"", "Storage"])?;
    expect("\\l", &["dev"])?;
    expect("\\dn", &["public"])?;
    expect("\\df", &["List of functions"])?;
    expect("\\du", &["List of roles", "Role name"])?;
    expect("\\dT", &["List of data types"])?;
    // Client-side switches, then a query under them.
    let out = psql(&server, &["\\x", "\\timing", "SELECT customer, n FROM revenue"])?;
    assert!(out.contains("customer | 7") && out.contains("Time:"), "\\x and \\timing:\n{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_subscribe_loop() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    let script = r#"
import sys, psycopg
url = sys.argv[1]
with psycopg.connect(url, autocommit=True) as writer, psycopg.connect(url) as conn:
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("DECLARE c CURSOR FOR SUBSCRIBE revenue")
        seen = {}
        def fold(rows):
            for ts, diff, customer, n, total in rows:
                key = (customer, n, str(total))
                seen[key] = seen.get(key, 0) + diff
                if seen[key] == 0:
                    del seen[key]
        cur.execute("FETCH ALL c WITH (timeout = '5s')")
        assert [d.name for d in cur.description] == ["eddy_timestamp", "eddy_diff", "customer", "n", "total"], cur.description
        fold(cur.fetchall())
        writer.execute("INSERT INTO orders VALUES (3, 7, 6.5, 'paid'), (4, 9, 1, 'paid')")
        for _ in range(40):
            expected = {(c, n, str(t)): 1 for c, n, t in writer.execute("SELECT customer, n, total FROM revenue").fetchall()}
            if seen == expected:
                break
            cur.execute("FETCH ALL c WITH (timeout = '500ms')")
            fold(cur.fetchall())
        assert seen == expected, (seen, expected)
        cur.execute("CLOSE c")
        cur.execute("COMMIT")
print("ok")
"#;
    run_python(&server, "psycopg 3 SUBSCRIBE loop", script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_client() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    let script = r#"
import sys, psycopg2
conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
cur.execute("SELECT customer, n, total FROM revenue WHERE customer = %s", (7,))
row = cur.fetchone()
assert row[0] == 7 and row[1] == 2 and float(row[2]) == 13.5, row
cur.execute("INSERT INTO orders VALUES (%s, %s, %s, %s)", (3, 8, 1.25, "paid"))
conn.commit()
# A named (server-side) cursor: DECLARE ... CURSOR WITHOUT HOLD FOR / FETCH FORWARD / CLOSE.
named = conn.cursor("big")
named.itersize = 2
named.execute("SELECT id FROM orders ORDER BY id")
assert [r[0] for r in named] == [1, 2, 3]
named.close()
conn.commit()
try:
    cur.execute("SELECT * FROM nope")
    raise SystemExit("expected an error")
except psycopg2.errors.UndefinedTable:
    conn.rollback()
cur.execute("SHOW server_version")
assert cur.fetchone()[0].startswith("15")
conn.close()
print("ok")
"#;
    run_python(&server, "psycopg2", script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_client() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    let script = r#"
import sys, asyncio, asyncpg
async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[2]), user="root", database="dev")
    row = await conn.fetchrow("SELECT customer, n, total FROM revenue WHERE customer = $1", 7)
    assert row["customer"] == 7 and row["n"] == 2 and float(row["total"]) == 13.5, row
    assert await conn.fetchval("SELECT count(*) FROM orders") == 2
    await conn.execute("INSERT INTO orders VALUES ($1, $2, $3, $4)", 3, 8, 2, "paid")
    async with conn.transaction():
        await conn.execute("INSERT INTO orders VALUES (4, 8, 1, 'paid')")
    assert await conn.fetchval("SELECT n FROM revenue WHERE customer = 8") == 2
    await conn.close()
    print("ok")
asyncio.run(main())
"#;
    run_python(&server, "asyncpg", script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_arrays() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    // Array results and parameters: asyncpg decodes them by the element type the server
    // reports (and introspects types it does not know), so a wrong OID breaks decoding.
    let script = r#"
import sys, asyncio, asyncpg
async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=int(sys.argv[2]), user="root", database="dev")
    ids = await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM orders")
    assert ids == [1, 2], ids
    statuses = await conn.fetchval("SELECT array_agg(status ORDER BY id) FROM orders")
    assert statuses == ["paid", "paid"], statuses
    assert await conn.fetchval("SELECT ARRAY[1.5, 2.5]::float8[]") == [1.5, 2.5]
    assert await conn.fetchval("SELECT ARRAY[10000000000, 2]") == [10000000000, 2]
    rows = await conn.fetch("SELECT id FROM orders WHERE id = ANY($1::int[]) ORDER BY id", [2, 5])
    assert [r["id"] for r in rows] == [2], rows
    assert await conn.fetchval("SELECT cardinality($1::text[])", ["a", "b", "c"]) == 3
    await conn.close()
    print("ok")
asyncio.run(main())
"#;
    run_python(&server, "asyncpg arrays", script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_reflection() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    let script = r#"
import sys
from sqlalchemy import create_engine, inspect, text
engine = create_engine(f"postgresql+psycopg://root@127.0.0.1:{sys.argv[2]}/dev")
insp = inspect(engine)
assert insp.get_table_names() == ["orders"], insp.get_table_names()
assert "paid" in insp.get_view_names(), insp.get_view_names()
assert "revenue" in insp.get_materialized_view_names(), insp.get_materialized_view_names()
columns = [(c["name"], str(c["type"]), c["nullable"], c["default"]) for c in insp.get_columns("orders")]
assert columns == [
    ("id", "INTEGER", False, None),
    ("customer", "INTEGER", False, None),
    ("amount", "NUMERIC", True, None),
    ("status", "TEXT", True, None),
], columns
assert [c["name"] for c in insp.get_columns("revenue")] == ["customer", "n", "total"]
pk = insp.get_pk_constraint("orders")
assert pk["constrained_columns"] == ["id"] and pk["name"] == "orders_pkey", pk
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE lines (order_id INT, line INT, qty INT, PRIMARY KEY (line, order_id))"))
# A composite key, in key order (not column order); a fresh inspector (they cache).
pk = inspect(engine).get_pk_constraint("lines")
assert pk["constrained_columns"] == ["line", "order_id"], pk
with engine.connect() as conn:
    rows = conn.execute(text("SELECT customer, n FROM revenue WHERE customer = :c"), {"c": 7}).all()
    assert rows == [(7, 2)], rows
    result = conn.execute(text("SELECT * FROM orders"))
    assert list(result.keys()) == ["id", "customer", "amount", "status"], list(result.keys())
print("ok")
"#;
    run_python(&server, "SQLAlchemy", script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg8000_client() -> Result<()> {
    let server = TestServer::start()?;
    seed(&server).await?;
    let script = r#"
import sys, pg8000.native, pg8000.dbapi
conn = pg8000.native.Connection("root", host="127.0.0.1", port=int(sys.argv[2]), database="dev")
rows = conn.run("SELECT customer, n, total FROM revenue WHERE customer = :c", c=7)
assert rows[0][0] == 7 and rows[0][1] == 2 and float(rows[0][2]) == 13.5, rows
conn.run("INSERT INTO orders VALUES (:i, :c, :a, :s)", i=3, c=8, a=4, s="paid")
assert conn.run("SELECT count(*) FROM orders")[0][0] == 3
conn.close()
db = pg8000.dbapi.connect(user="root", host="127.0.0.1", port=int(sys.argv[2]), database="dev")
cur = db.cursor()
cur.execute("SELECT n FROM revenue WHERE customer = %s", (8,))
assert cur.fetchone()[0] == 1
db.commit()
db.close()
print("ok")
"#;
    run_python(&server, "pg8000", script)
}

const JDBC_PROGRAM: &str = r#"
import java.sql.*;
public class EddyJdbc {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/dev";
        try (Connection c = DriverManager.getConnection(url, "root", "")) {
            DatabaseMetaData md = c.getMetaData();
            java.util.List<String> tables = new java.util.ArrayList<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            if (!tables.equals(java.util.List.of("orders"))) throw new AssertionError("tables " + tables);
            java.util.List<String> cols = new java.util.ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "orders", "%")) {
                while (rs.next()) cols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            }
            if (!cols.equals(java.util.List.of("id:int4", "customer:int4", "amount:numeric", "status:text")))
                throw new AssertionError("columns " + cols);
            java.util.List<String> keys = new java.util.ArrayList<>();
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "orders")) {
                while (rs.next()) keys.add(rs.getString("COLUMN_NAME") + ":" + rs.getInt("KEY_SEQ") + ":" + rs.getString("PK_NAME"));
            }
            if (!keys.equals(java.util.List.of("id:1:orders_pkey"))) throw new AssertionError("primary keys " + keys);
            // Past the 5th execution the driver switches to a named statement with binary results.
            try (PreparedStatement ps = c.prepareStatement("SELECT customer, n, total FROM revenue WHERE customer = ?")) {
                for (int i = 0; i < 8; i++) {
                    ps.setInt(1, 7);
                    try (ResultSet rs = ps.executeQuery()) {
                        if (!rs.next()) throw new AssertionError("no row at execution " + i);
                        if (rs.getInt(1) != 7 || rs.getLong(2) != 2 || rs.getBigDecimal(3).compareTo(new java.math.BigDecimal("13.5")) != 0)
                            throw new AssertionError("row at execution " + i + ": " + rs.getInt(1) + " " + rs.getLong(2) + " " + rs.getBigDecimal(3));
                    }
                }
            }
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO orders VALUES (?, ?, ?, ?)")) {
                for (int i = 0; i < 7; i++) {
                    ins.setInt(1, 100 + i); ins.setInt(2, 9); ins.setBigDecimal(3, new java.math.BigDecimal("1.5")); ins.setString(4, "paid");
                    if (ins.executeUpdate() != 1) throw new AssertionError("insert " + i);
                }
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT n FROM revenue WHERE customer = 9")) {
                if (!rs.next() || rs.getLong(1) != 7) throw new AssertionError("revenue of 9");
            }
        }
        System.out.println("ok");
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_client() -> Result<()> {
    if !Path::new(JDBC_JAR).is_file() {
        bail!("{JDBC_JAR} is missing: run scripts/setup-client-tests.sh (package libpostgresql-jdbc-java)");
    }
    let server = TestServer::start()?;
    seed(&server).await?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/jdbc-test");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("EddyJdbc.java"), JDBC_PROGRAM)?;
    let status =
        Command::new("javac").arg("-cp").arg(JDBC_JAR).arg("-d").arg(&dir).arg(dir.join("EddyJdbc.java")).status()?;
    if !status.success() {
        bail!("javac failed");
    }
    let classpath = format!("{}:{}", dir.display(), JDBC_JAR);
    let out = Command::new("java").arg("-cp").arg(classpath).arg("EddyJdbc").arg(server.port.to_string()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("ok"), "JDBC failed:\n{stdout}\n{stderr}\n{}", server.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_and_settings() -> Result<()> {
    use std::io::Write;
    let server = TestServer::start()?;
    seed(&server).await?;
    // psql's COPY FROM STDIN, text format with an escaped tab and a NULL.
    let mut child = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port.to_string(),
            "-U",
            "root",
            "-d",
            "dev",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-c", "COPY orders (id, customer, amount, status) FROM STDIN"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(b"10\t8\t1.5\tpa\\tid\n11\t8\t\\N\tpaid\n")?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("COPY 2"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let client = server.connect().await?;
    let rows =
        client.query("SELECT id, status, amount IS NULL FROM orders WHERE customer = 8 ORDER BY id", &[]).await?;
    let got: Vec<(i32, String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, vec![(10, "pa\tid".to_string(), false), (11, "paid".to_string(), true)]);
    // CSV with a header through psycopg 3's copy.
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    with conn.cursor() as cur:
        with cur.copy("COPY orders FROM STDIN WITH (FORMAT csv, HEADER true)") as copy:
            copy.write("id,customer,amount,status\n20,9,2,\"a,b\"\n21,9,3,paid\n")
        cur.execute("SELECT n, total FROM revenue WHERE customer = 9")
        n, total = cur.fetchone()
        assert n == 2 and float(total) == 5, (n, total)
        # A duplicate key fails the COPY with the key violation.
        try:
            with cur.copy("COPY orders FROM STDIN") as copy:
                copy.write_row((20, 9, 1, "dup"))
            raise SystemExit("expected a unique violation")
        except psycopg.errors.UniqueViolation:
            pass
print("ok")
"#;
    run_python(&server, "psycopg 3 COPY FROM STDIN", script)?;

    // Settings: known ones are set and shown, unknown ones are an error.
    client.batch_execute("SET application_name = 'dash'; SET extra_float_digits = 3; SET myapp.flag = 'x'").await?;
    let name: String = client.query_one("SHOW application_name", &[]).await?.get(0);
    assert_eq!(name, "dash");
    let err = client.batch_execute("SET no_such_setting = 1").await.err().context("unknown setting")?;
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42704"), "{err}");
    let err = client.query("SHOW no_such_setting", &[]).await.err().context("unknown setting")?;
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42704"), "{err}");
    Ok(())
}

/// psql as `user` with `password`; whether it succeeded, and its output and errors.
fn psql_as(server: &TestServer, user: &str, password: &str, command: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", user, "-d", "dev", "-X", "-w"])
        .args(["-c", command])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output();
    match out {
        Ok(o) => (
            o.status.success() && o.stderr.is_empty(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => (false, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_passwords_with_psql_and_psycopg() -> Result<()> {
    let mut server = TestServer::start()?;
    seed(&server).await?;
    // Users are made under the default trust authentication, then the server is restarted
    // with passwords required: they must have been stored durably.
    let client = server.connect().await?;
    client.batch_execute("CREATE USER alice PASSWORD 's3cret w0rd'; CREATE ROLE bob WITH LOGIN").await?;
    let err = client.batch_execute("CREATE USER alice").await.err().context("duplicate user")?;
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42710"), "{err}");
    client.batch_execute("ALTER USER bob WITH PASSWORD 'builder'; CREATE USER carol; DROP USER carol").await?;
    let roles: Vec<String> = client
        .query("SELECT rolname FROM pg_catalog.pg_roles ORDER BY rolname", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(roles, vec!["alice", "bob", "root"]);
    let out = psql(&server, &["\\du"])?;
    assert!(out.contains("alice") && out.contains("bob"), "\\du:\n{out}");
    drop(client);
    // Only a salted verifier is stored, never the password.
    for entry in std::fs::read_dir(server.data_dir())?.flatten() {
        if let Ok(bytes) = std::fs::read(entry.path()) {
            let found = bytes.windows(b"s3cret w0rd".len()).any(|w| w == b"s3cret w0rd");
            assert!(!found, "the password is stored in {}", entry.path().display());
        }
    }

    server.restart_with(&["--auth", "scram"])?;

    let (ok, out) = psql_as(&server, "alice", "s3cret w0rd", "SELECT customer, n FROM revenue");
    assert!(ok && out.contains("7 |"), "psql with a password:\n{out}\n{}", server.log());
    let (ok, out) = psql_as(&server, "bob", "builder", "\\du");
    assert!(ok && out.contains("alice"), "\\du as bob:\n{out}");
    // Wrong password, unknown user, and a user without a password all fail the same way.
    for (user, password) in [("alice", "s3cret"), ("mallory", "x"), ("root", "x")] {
        let (ok, out) = psql_as(&server, user, password, "SELECT 1");
        assert!(!ok && out.contains("password authentication failed"), "{user}: {out}");
    }

    // tokio-postgres sees SQLSTATE 28P01.
    let url = |user: &str, password: &str| {
        format!("host=127.0.0.1 port={} user={user} password='{password}' dbname=dev", server.port)
    };
    let err = tokio_postgres::connect(&url("alice", "nope"), tokio_postgres::NoTls).await.err().context("wrong")?;
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28P01"), "{err}");
    let (good, connection) = tokio_postgres::connect(&url("alice", "s3cret w0rd"), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let n: i64 = good.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    assert_eq!(n, 2);

    let script = r#"
import sys, psycopg
port = sys.argv[2]
dsn = f"host=127.0.0.1 port={port} dbname=dev"
with psycopg.connect(dsn, user="alice", password="s3cret w0rd") as conn:
    assert conn.execute("SELECT n FROM revenue WHERE customer = 7").fetchone()[0] == 2
    conn.execute("ALTER USER alice PASSWORD 'rotated'")
    conn.commit()
try:
    psycopg.connect(dsn, user="alice", password="s3cret w0rd")
    raise SystemExit("the old password still works")
except psycopg.OperationalError as e:
    assert "password authentication failed" in str(e), str(e)
with psycopg.connect(dsn, user="alice", password="rotated") as conn:
    assert conn.execute("SELECT 1").fetchone()[0] == 1
print("ok")
"#;
    run_python(&server, "psycopg 3 with a password", script)
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (made by the openssl CLI).
fn self_signed_certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

fn psql_with(server: &TestServer, conninfo: &str, command: &str) -> (bool, String) {
    let out = Command::new("psql")
        .arg(format!("host=127.0.0.1 port={} user=root dbname=dev {conninfo}", server.port))
        .args(["-X", "-w", "-c", command])
        .env("PGCONNECT_TIMEOUT", "10")
        .output();
    match out {
        Ok(o) => (
            o.status.success(),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        ),
        Err(e) => (false, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_psql_psycopg_and_asyncpg() -> Result<()> {
    let certs = tempfile::tempdir()?;
    let (cert, key) = self_signed_certificate(certs.path())?;
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());

    // A certificate that cannot be read stops the server at start, naming the file.
    let out = Command::new(eddy_sql_tests::eddy_binary()?)
        .args(["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent/server.crt", "--tls-key", &key_arg])
        .arg("--data-dir")
        .arg(certs.path().join("unused-data"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("/nonexistent/server.crt"), "{stderr}");

    // Without a certificate, TLS is declined: `require` fails, `prefer` goes on in the clear.
    let plain = TestServer::start()?;
    let (ok, out) = psql_with(&plain, "sslmode=require", "SELECT 1");
    assert!(!ok && out.contains("does not support SSL"), "{out}");
    let (ok, out) = psql_with(&plain, "sslmode=prefer", "\\conninfo");
    assert!(ok && !out.contains("SSL connection"), "{out}");
    drop(plain);

    let mut server = TestServer::start_with(&["--tls-cert", &cert_arg, "--tls-key", &key_arg])?;
    seed(&server).await?;
    let (ok, out) = psql_with(&server, "sslmode=require", "\\conninfo");
    assert!(ok && out.contains("SSL connection (protocol: TLSv1.3"), "{out}\n{}", server.log());
    let conninfo = format!("host=localhost sslmode=verify-full sslrootcert={cert_arg}");
    let (ok, out) = psql_with(&server, &conninfo, "SELECT customer, n FROM revenue");
    assert!(ok && out.contains("7 |"), "{out}");

    let script = format!(
        r#"
import sys, ssl, asyncio, psycopg, asyncpg
port = int(sys.argv[2])
dsn = f"host=localhost port={{port}} user=root dbname=dev sslmode=verify-full sslrootcert={cert_arg}"
with psycopg.connect(dsn) as conn:
    assert conn.pgconn.ssl_in_use
    assert conn.execute("SELECT n FROM revenue WHERE customer = 7").fetchone()[0] == 2
    conn.execute("INSERT INTO orders VALUES (3, 8, 1, 'paid')")
    conn.commit()
async def main():
    context = ssl.create_default_context(cafile="{cert_arg}")
    conn = await asyncpg.connect(host="localhost", port=port, user="root", database="dev", ssl=context)
    assert await conn.fetchval("SELECT n FROM revenue WHERE customer = 8") == 1
    await conn.close()
asyncio.run(main())
print("ok")
"#
    );
    run_python(&server, "psycopg 3 and asyncpg over TLS", &script)?;

    // Passwords over TLS: a wrong one is refused, the right one connects.
    server.connect().await?.batch_execute("CREATE USER alice PASSWORD 'over tls'").await?;
    server.restart_with(&["--auth", "scram"])?;
    let script = format!(
        r#"
import sys, psycopg
dsn = f"host=localhost port={{sys.argv[2]}} dbname=dev user=alice sslmode=verify-full sslrootcert={cert_arg}"
try:
    psycopg.connect(dsn, password="wrong")
    raise SystemExit("a wrong password connected")
except psycopg.OperationalError as e:
    assert "password authentication failed" in str(e), str(e)
with psycopg.connect(dsn, password="over tls") as conn:
    assert conn.pgconn.ssl_in_use
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 3
print("ok")
"#
    );
    run_python(&server, "psycopg 3 with a password over TLS", &script)
}
