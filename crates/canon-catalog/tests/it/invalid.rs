//! For each seed catalog: a valid seed event passes, and at least ten mutations of it fail with
//! the right code at the right place.

use canon_envelope::{CloudEvent, Data, Dialect, ErrorCode};
use expect_test::{Expect, expect};
use serde_json::{Value, json};

use crate::examples::events;
use crate::load_example;

/// (catalog, type, a required field, a field that must be a string, an enum field, a date-time field)
struct Case {
    catalog: &'static str,
    ty: &'static str,
    required: &'static str,
    string: &'static str,
    enumerated: &'static str,
    datetime: &'static str,
}

/// A named change to an event and its payload.
type Mutation = (&'static str, Box<dyn Fn(&mut CloudEvent, &mut Value)>);

fn mutations(c: &Case) -> Vec<Mutation> {
    let (required, string, enumerated, datetime) = (c.required, c.string, c.enumerated, c.datetime);
    vec![
        (
            "drop a required field",
            Box::new(move |_, p| drop(p.as_object_mut().unwrap().remove(required))),
        ),
        (
            "add an undeclared field",
            Box::new(|_, p| {
                drop(
                    p.as_object_mut()
                        .unwrap()
                        .insert("surprise".into(), json!(1)),
                );
            }),
        ),
        ("wrong type", Box::new(move |_, p| p[string] = json!(12345))),
        (
            "value outside the enum",
            Box::new(move |_, p| p[enumerated] = json!("not-a-value")),
        ),
        (
            "not a date-time",
            Box::new(move |_, p| p[datetime] = json!("yesterday")),
        ),
        (
            "two problems at once",
            Box::new(move |_, p| {
                p.as_object_mut().unwrap().remove(required);
                p[enumerated] = json!(false);
            }),
        ),
        (
            "undeclared type",
            Box::new(|e, _| e.ty = "nobody.declared.this".into()),
        ),
        (
            "undeclared version",
            Box::new(|e, _| e.set_extension("dataversion", "99")),
        ),
        ("payload is an array", Box::new(|_, p| *p = json!([1, 2]))),
        ("payload is a string", Box::new(|_, p| *p = json!("text"))),
        ("empty id", Box::new(|e, _| e.id = String::new())),
        (
            "time is not RFC 3339",
            Box::new(|e, _| e.time = Some("25/02/2025".into())),
        ),
    ]
}

fn check(case: Case, expect: Expect) {
    let catalog = load_example(case.catalog);
    let original = events(case.catalog)
        .into_iter()
        .map(|e| catalog.dialect.decode(e.to_string().as_bytes()).unwrap())
        .find(|e| e.ty == case.ty)
        .unwrap_or_else(|| panic!("no example {}", case.ty));
    assert!(
        catalog.validate(&original).is_empty(),
        "the seed example must be valid"
    );
    let mut out = String::new();
    for (label, mutate) in mutations(&case) {
        let mut ev = original.clone();
        let mut payload: Value =
            serde_json::from_slice(ev.data.as_ref().unwrap().as_bytes()).unwrap();
        mutate(&mut ev, &mut payload);
        ev.data = Some(Data::json(payload.to_string()).unwrap());
        // Through the app's own dialect, as a producer would send it.
        let violations = match catalog.dialect.encode(&ev) {
            Ok(doc) => match catalog.validate_document(catalog.dialect, &doc) {
                Ok(_) => panic!("{}: {label}: accepted", case.catalog),
                Err(v) => v,
            },
            // lifeos cannot even carry a non-object payload; check the canonical event.
            Err(e)
                if catalog.dialect == Dialect::LifeOs
                    && e.0[0].code == ErrorCode::Unrepresentable =>
            {
                catalog.validate(&ev)
            }
            Err(e) => panic!("{}: {label}: cannot encode: {e}", case.catalog),
        };
        assert!(
            !violations.is_empty(),
            "{}: {label}: accepted",
            case.catalog
        );
        out.push_str(&format!("{label}:\n"));
        for v in violations {
            out.push_str(&format!(
                "  {} {} {}@{}\n",
                v.code,
                v.location,
                v.type_name.unwrap_or_default(),
                v.version.unwrap_or_default()
            ));
        }
    }
    expect.assert_eq(&out);
}

#[test]
fn coach_refuses_broken_events() {
    let c = Case {
        catalog: "coach",
        ty: "challenge.completed",
        required: "challengeId",
        string: "userId",
        enumerated: "result",
        datetime: "completedAt",
    };
    check(
        c,
        expect![[r#"
        drop a required field:
          payload-required /data/challengeId challenge.completed@1
        add an undeclared field:
          payload-unknown-field /data/surprise challenge.completed@1
        wrong type:
          payload-type /data/userId challenge.completed@1
        value outside the enum:
          payload-enum /data/result challenge.completed@1
        not a date-time:
          payload-format /data/completedAt challenge.completed@1
        two problems at once:
          payload-required /data/challengeId challenge.completed@1
          payload-type /data/result challenge.completed@1
          payload-enum /data/result challenge.completed@1
        undeclared type:
          unknown-type /type nobody.declared.this@
        undeclared version:
          unknown-version /dataversion challenge.completed@99
        payload is an array:
          payload-type /data challenge.completed@1
        payload is a string:
          payload-type /data challenge.completed@1
        empty id:
          empty-attribute /id @
        time is not RFC 3339:
          invalid-timestamp /time @
    "#]],
    );
}

#[test]
fn bme_refuses_broken_events() {
    let c = Case {
        catalog: "bme",
        ty: "money.TransactionCreated",
        required: "amount",
        string: "currency",
        enumerated: "type",
        datetime: "date",
    };
    check(
        c,
        expect![[r#"
        drop a required field:
          payload-required /data/amount money.TransactionCreated@1
        add an undeclared field:
          payload-unknown-field /data/surprise money.TransactionCreated@1
        wrong type:
          payload-type /data/currency money.TransactionCreated@1
        value outside the enum:
          payload-enum /data/type money.TransactionCreated@1
        not a date-time:
          payload-format /data/date money.TransactionCreated@1
        two problems at once:
          payload-required /data/amount money.TransactionCreated@1
          payload-type /data/type money.TransactionCreated@1
          payload-enum /data/type money.TransactionCreated@1
        undeclared type:
          unknown-type /type nobody.declared.this@
        undeclared version:
          unknown-version /dataversion money.TransactionCreated@99
        payload is an array:
          payload-type /data money.TransactionCreated@1
        payload is a string:
          payload-type /data money.TransactionCreated@1
        empty id:
          empty-attribute /eventId @
        time is not RFC 3339:
          invalid-timestamp /metadata/timestamp @
    "#]],
    );
}

#[test]
fn go4u_refuses_broken_events() {
    let c = Case {
        catalog: "go4u",
        ty: "user.registered",
        required: "user_id",
        string: "email_hash",
        enumerated: "role",
        datetime: "created_at",
    };
    check(
        c,
        expect![[r#"
        drop a required field:
          payload-required /data/user_id user.registered@1
        add an undeclared field:
          payload-unknown-field /data/surprise user.registered@1
        wrong type:
          payload-type /data/email_hash user.registered@1
        value outside the enum:
          payload-enum /data/role user.registered@1
        not a date-time:
          payload-format /data/created_at user.registered@1
        two problems at once:
          payload-required /data/user_id user.registered@1
          payload-type /data/role user.registered@1
          payload-enum /data/role user.registered@1
        undeclared type:
          unknown-type /type nobody.declared.this@
        undeclared version:
          unknown-version /dataversion user.registered@99
        payload is an array:
          payload-type /data user.registered@1
        payload is a string:
          payload-type /data user.registered@1
        empty id:
          empty-attribute /event_id @
        time is not RFC 3339:
          invalid-timestamp /occurred_at @
    "#]],
    );
}

#[test]
fn lifeos_refuses_broken_events() {
    let c = Case {
        catalog: "lifeos",
        ty: "QuestCompleted",
        required: "quest_id",
        string: "quest_type",
        enumerated: "quest_type",
        datetime: "completion_timestamp",
    };
    check(
        c,
        expect![[r#"
        drop a required field:
          payload-required /data/quest_id QuestCompleted@1.0.0
        add an undeclared field:
          payload-unknown-field /data/surprise QuestCompleted@1.0.0
        wrong type:
          payload-type /data/quest_type QuestCompleted@1.0.0
          payload-enum /data/quest_type QuestCompleted@1.0.0
        value outside the enum:
          payload-enum /data/quest_type QuestCompleted@1.0.0
        not a date-time:
          payload-format /data/completion_timestamp QuestCompleted@1.0.0
        two problems at once:
          payload-required /data/quest_id QuestCompleted@1.0.0
          payload-type /data/quest_type QuestCompleted@1.0.0
          payload-enum /data/quest_type QuestCompleted@1.0.0
        undeclared type:
          unknown-type /type nobody.declared.this@
        undeclared version:
          unknown-version /dataversion QuestCompleted@99
        payload is an array:
          payload-type /data QuestCompleted@1.0.0
        payload is a string:
          payload-type /data QuestCompleted@1.0.0
        empty id:
          empty-attribute /event_id @
        time is not RFC 3339:
          invalid-timestamp /timestamp @
    "#]],
    );
}

#[test]
fn todo_refuses_broken_events() {
    let c = Case {
        catalog: "todo",
        ty: "com.todo.task.created.v1",
        required: "title",
        string: "title",
        enumerated: "priority",
        datetime: "created_at",
    };
    check(
        c,
        expect![[r#"
        drop a required field:
          payload-required /data/title com.todo.task.created.v1@1
        add an undeclared field:
          payload-unknown-field /data/surprise com.todo.task.created.v1@1
        wrong type:
          payload-type /data/title com.todo.task.created.v1@1
        value outside the enum:
          payload-enum /data/priority com.todo.task.created.v1@1
        not a date-time:
          payload-format /data/created_at com.todo.task.created.v1@1
        two problems at once:
          payload-required /data/title com.todo.task.created.v1@1
          payload-type /data/priority com.todo.task.created.v1@1
          payload-enum /data/priority com.todo.task.created.v1@1
        undeclared type:
          unknown-type /type nobody.declared.this@
        undeclared version:
          unknown-version /dataversion com.todo.task.created.v1@99
        payload is an array:
          payload-type /data com.todo.task.created.v1@1
        payload is a string:
          payload-type /data com.todo.task.created.v1@1
        empty id:
          empty-attribute /id @
        time is not RFC 3339:
          invalid-timestamp /time @
    "#]],
    );
}

#[test]
fn personal_data_rules_hold() {
    let catalog = load_example("go4u");
    let mut ev = events("go4u")
        .into_iter()
        .find(|e| e["event_name"] == "user.registered")
        .unwrap();
    ev["payload"]["email_hash"] = json!("bob@example.com");
    let v = catalog
        .validate_document(catalog.dialect, ev.to_string().as_bytes())
        .unwrap_err();
    assert!(
        v.iter()
            .any(|v| v.code == "pii-not-hashed" && v.location == "/data/email_hash"),
        "{v:?}"
    );
}
