//! Who may do what, and where. Every user has a role and belongs to a unit
//! of the administrative tree (root → province → district → commune); zones
//! belong to a unit, receivers to a zone. A user sees and targets only what
//! lies under their own unit (their *scope*); programmes uploaded higher up
//! the tree are visible below (a province bulletin can be played by every
//! commune) but only managed where they were uploaded.
//!
//! Roles:
//! - `admin`: everything in scope, including users and units;
//! - `technician`: zones and receivers;
//! - `editor`: uploads programmes and drafts schedules, submits them;
//! - `approver`: approves or rejects programmes and schedules, starts live
//!   and emergency broadcasts (no second approval), and may do what an
//!   editor does — what an approver or admin creates is approved at once;
//! - `viewer`: reads only.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use loa_schedules::Targets;
use serde::Serialize;
use sqlx::SqlitePool;

use super::ApiError;
use crate::auth::AuthUser;

/// The id of the root unit (created by the migration).
pub const ROOT_UNIT: &str = "root";

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Technician,
    Editor,
    Approver,
    Viewer,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Approver,
        Role::Editor,
        Role::Technician,
        Role::Viewer,
    ];

    /// Parses a stored or requested role name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name.trim())
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Technician => "technician",
            Role::Editor => "editor",
            Role::Approver => "approver",
            Role::Viewer => "viewer",
        }
    }

    /// The Vietnamese name shown to officers.
    pub fn label_vi(self) -> &'static str {
        match self {
            Role::Admin => "Quản trị",
            Role::Technician => "Kỹ thuật viên",
            Role::Editor => "Biên tập viên",
            Role::Approver => "Người duyệt",
            Role::Viewer => "Người xem",
        }
    }

    /// May create, change and delete zones and receivers.
    pub fn manages_devices(self) -> bool {
        matches!(self, Role::Admin | Role::Technician)
    }

    /// May upload programmes and create or submit schedules.
    pub fn edits(self) -> bool {
        matches!(self, Role::Admin | Role::Editor | Role::Approver)
    }

    /// May approve or reject programmes and schedules.
    pub fn approves(self) -> bool {
        matches!(self, Role::Admin | Role::Approver)
    }

    /// May start and stop live and emergency broadcasts.
    pub fn broadcasts(self) -> bool {
        matches!(self, Role::Admin | Role::Approver)
    }

    /// May manage users and units, and read the audit log.
    pub fn administers(self) -> bool {
        self == Role::Admin
    }
}

impl AuthUser {
    /// The user's role; an unknown stored name counts as `viewer`.
    pub fn role_kind(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Viewer)
    }

    /// `Ok` if `allowed`, else 403 naming the user's role and what it may
    /// not do (`action_vi`, e.g. "duyệt chương trình").
    pub fn require(&self, allowed: bool, action_vi: &str) -> Result<(), ApiError> {
        if allowed {
            return Ok(());
        }
        let role = self.role_kind();
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} may not do this", role.as_str()),
            format!(
                "Vai trò \"{}\" của bạn không được phép {action_vi}.",
                role.label_vi()
            ),
        ))
    }
}

/// One unit of the tree.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Unit {
    /// The unit's id.
    pub id: String,
    /// Its parent; `None` only for the root.
    pub parent_id: Option<String>,
    /// `root`, `province`, `district` or `commune`.
    pub kind: String,
    /// Display name, e.g. "Xã Tân Lập".
    pub name: String,
}

/// Loads every unit (the tree is small: a province has a few hundred).
pub async fn all_units(db: &SqlitePool) -> Result<HashMap<String, Unit>, ApiError> {
    let rows: Vec<Unit> = sqlx::query_as("SELECT id, parent_id, kind, name FROM units")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|u| (u.id.clone(), u)).collect())
}

/// What lies under one unit.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The unit the scope is rooted at.
    pub unit: String,
    /// That unit and every unit below it.
    subtree: HashSet<String>,
    /// The unit's ancestors, nearest first.
    ancestors: Vec<String>,
}

impl Scope {
    /// The scope of a logged-in user.
    pub async fn of(db: &SqlitePool, user: &AuthUser) -> Result<Scope, ApiError> {
        let units = all_units(db).await?;
        Ok(Scope::within(&units, &user.unit_id))
    }

    /// The scope rooted at `unit` in `units`. A unit that no longer exists
    /// gives a scope holding only that id (so it sees nothing else).
    pub fn within(units: &HashMap<String, Unit>, unit: &str) -> Scope {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for u in units.values() {
            if let Some(p) = &u.parent_id {
                children.entry(p.as_str()).or_default().push(u.id.as_str());
            }
        }
        let mut subtree = HashSet::new();
        let mut stack = vec![unit];
        while let Some(id) = stack.pop() {
            if subtree.insert(id.to_string()) {
                stack.extend(children.get(id).into_iter().flatten().copied());
            }
        }
        let mut ancestors = Vec::new();
        let mut at = units.get(unit).and_then(|u| u.parent_id.clone());
        while let Some(id) = at {
            if ancestors.contains(&id) || subtree.contains(&id) {
                break; // a cycle; the API never creates one
            }
            at = units.get(&id).and_then(|u| u.parent_id.clone());
            ancestors.push(id);
        }
        Scope {
            unit: unit.to_string(),
            subtree,
            ancestors,
        }
    }

    /// Whether the scope is the whole system.
    pub fn is_root(&self) -> bool {
        self.unit == ROOT_UNIT
    }

    /// Whether `unit` (`None` = root) is in the scope.
    pub fn covers(&self, unit: Option<&str>) -> bool {
        self.subtree.contains(unit.unwrap_or(ROOT_UNIT))
    }

    /// Whether content owned by `unit` is visible: in scope, or above it.
    pub fn sees(&self, unit: Option<&str>) -> bool {
        let unit = unit.unwrap_or(ROOT_UNIT);
        self.subtree.contains(unit) || self.ancestors.iter().any(|a| a == unit)
    }

    /// The units of the scope.
    pub fn units(&self) -> impl Iterator<Item = &str> {
        self.subtree.iter().map(String::as_str)
    }

    /// Zones in scope, with the unit each belongs to.
    pub async fn zones(&self, db: &SqlitePool) -> Result<HashMap<String, String>, ApiError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, COALESCE(unit_id, 'root') FROM zones")
                .fetch_all(db)
                .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, unit)| self.subtree.contains(unit))
            .collect())
    }

    /// Receivers in scope, with their zone.
    pub async fn receivers(&self, db: &SqlitePool) -> Result<HashMap<String, String>, ApiError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT r.id, r.zone_id, COALESCE(z.unit_id, 'root') \
             FROM receivers r JOIN zones z ON z.id = r.zone_id",
        )
        .fetch_all(db)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, _, unit)| self.subtree.contains(unit))
            .map(|(id, zone, _)| (id, zone))
            .collect())
    }

    /// Whether targets that exist are all in scope; 403 naming the first
    /// one that is not. (Unknown ids are the caller's 422 to report.)
    pub async fn check_targets(&self, db: &SqlitePool, targets: &Targets) -> Result<(), ApiError> {
        if self.is_root() {
            return Ok(());
        }
        let zones = self.zones(db).await?;
        if let Some(z) = targets.zones.iter().find(|z| !zones.contains_key(*z)) {
            return Err(out_of_scope("zone", "khu vực", z));
        }
        let receivers = self.receivers(db).await?;
        if let Some(r) = targets
            .receivers
            .iter()
            .find(|r| !receivers.contains_key(*r))
        {
            return Err(out_of_scope("receiver", "loa", r));
        }
        Ok(())
    }

    /// Whether a schedule's targets touch the scope at all (it is then
    /// visible, even if made higher up).
    pub fn touches(
        &self,
        zones_in_scope: &HashMap<String, String>,
        receivers_in_scope: &HashMap<String, String>,
        targets: &Targets,
    ) -> bool {
        targets.zones.iter().any(|z| zones_in_scope.contains_key(z))
            || targets
                .receivers
                .iter()
                .any(|r| receivers_in_scope.contains_key(r))
    }
}

/// Whether `user` may start a live broadcast to `targets`: approvers and
/// admins only (an emergency needs no second approval), inside their unit.
pub async fn authorize_broadcast(
    db: &SqlitePool,
    user: &AuthUser,
    targets: &Targets,
) -> Result<(), ApiError> {
    user.require(
        user.role_kind().broadcasts(),
        "phát trực tiếp hoặc phát khẩn cấp",
    )?;
    Scope::of(db, user).await?.check_targets(db, targets).await
}

/// 403 for a target outside the user's unit.
pub fn out_of_scope(what: &str, what_vi: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "out_of_scope",
        format!("{what} {id:?} is outside your unit"),
        format!(
            "{} \"{id}\" không thuộc đơn vị của bạn.",
            capitalise(what_vi)
        ),
    )
}

/// 404 for something that exists but lies outside the user's scope (so
/// that its existence is not revealed).
pub fn hidden(what: &str, what_vi: &str, id: &str) -> ApiError {
    ApiError::not_found(what, what_vi, id)
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(id: &str, parent: Option<&str>, kind: &str) -> (String, Unit) {
        (
            id.to_string(),
            Unit {
                id: id.into(),
                parent_id: parent.map(str::to_string),
                kind: kind.into(),
                name: id.into(),
            },
        )
    }

    #[test]
    fn scopes_cover_subtrees_and_see_ancestors() {
        let units: HashMap<_, _> = [
            unit("root", None, "root"),
            unit("p", Some("root"), "province"),
            unit("d", Some("p"), "district"),
            unit("c1", Some("d"), "commune"),
            unit("c2", Some("d"), "commune"),
        ]
        .into_iter()
        .collect();
        let c1 = Scope::within(&units, "c1");
        assert!(c1.covers(Some("c1")));
        assert!(!c1.covers(Some("c2")));
        assert!(!c1.covers(None));
        assert!(c1.sees(Some("p")) && c1.sees(None));
        assert!(!c1.sees(Some("c2")));
        let d = Scope::within(&units, "d");
        assert!(d.covers(Some("c1")) && d.covers(Some("c2")) && !d.covers(Some("p")));
        let root = Scope::within(&units, "root");
        assert!(root.is_root() && root.covers(Some("c2")) && root.covers(None));
        assert_eq!(Role::parse("editor"), Some(Role::Editor));
        assert_eq!(Role::parse("boss"), None);
        assert!(Role::Approver.broadcasts() && !Role::Editor.broadcasts());
    }
}
