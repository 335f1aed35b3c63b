//! How the `user`, `role` and `auth` commands print their answers in each
//! `-w` format, as etcdctl 3.4 prints them: a sentence (simple), the
//! response (json, protobuf), its header and fields (fields, where etcdctl
//! has them); `table` is refused, after the call, as etcdctl refuses it.
//! `auth status` (etcdctl 3.5's; 3.4 has none) prints as 3.5 does.

use std::io::Write;

use keel_api::authpb::permission::Type as PermissionType;
use keel_api::authpb::Permission;
use keel_api::etcdserverpb::{
    AuthRoleGetResponse, AuthRoleListResponse, AuthStatusResponse, AuthUserGetResponse, AuthUserListResponse,
    ResponseHeader,
};
use keel_api::key_range::{prefix_range_end, FROM_KEY_RANGE_END};
use prost::Message;

use super::json::{self, Json, Obj};
use super::{fields, Format, Output, Printer};
use crate::error::CtlError;
use crate::go_value_format::quote;

// Writes go to an in-memory buffer (`Output`), which cannot fail.

/// A permission's keys as etcdctl prints them: the key alone, `[key, end)`,
/// `[key, <open ended>` for every key from key on, and with `note_prefix`
/// a prefix's range followed by `(prefix key)`.
pub fn perm_range_text(key: &[u8], range_end: &[u8], note_prefix: bool) -> String {
    let key_text = String::from_utf8_lossy(key);
    if range_end.is_empty() {
        key_text.into_owned()
    } else if range_end == FROM_KEY_RANGE_END {
        format!("[{key_text}, <open ended>")
    } else {
        let end_text = String::from_utf8_lossy(range_end);
        if note_prefix && range_end == prefix_range_end(key).as_slice() {
            format!("[{key_text}, {end_text}) (prefix {key_text})")
        } else {
            format!("[{key_text}, {end_text})")
        }
    }
}

fn type_name(value: i32) -> String {
    match PermissionType::try_from(value) {
        Ok(known) => known.as_str_name().to_string(),
        Err(_) => value.to_string(),
    }
}

fn header_only(header: &Option<ResponseHeader>) -> Json {
    Obj::default().opt("header", json::header(header)).done()
}

fn perm_json(perm: &Permission) -> Json {
    Obj::default()
        .int("permType", perm.perm_type)
        .bytes("key", &perm.key)
        .bytes("range_end", &perm.range_end)
        .done()
}

fn role_get_simple(out: &mut Vec<u8>, name: &str, perms: &[Permission]) {
    let _ = writeln!(out, "Role {name}");
    let lists = [
        ("KV Read:", [PermissionType::Read, PermissionType::Readwrite]),
        ("KV Write:", [PermissionType::Write, PermissionType::Readwrite]),
    ];
    for (title, kinds) in lists {
        let _ = writeln!(out, "{title}");
        for perm in perms
            .iter()
            .filter(|p| kinds.iter().any(|k| *k as i32 == p.perm_type))
        {
            let _ = writeln!(out, "\t{}", perm_range_text(&perm.key, &perm.range_end, true));
        }
    }
}

fn role_get_fields(out: &mut Vec<u8>, response: &AuthRoleGetResponse) {
    fields::header(out, &response.header);
    for perm in &response.perm {
        let _ = writeln!(out, "\"PermType\" :  {}", type_name(perm.perm_type));
        let _ = writeln!(out, "\"Key\" : {}", quote(&perm.key));
        let _ = writeln!(out, "\"RangeEnd\" : {}", quote(&perm.range_end));
    }
}

impl Printer {
    /// A change answered by a header alone (user and role add, delete,
    /// grants, revokes, passwd): `simple` is its sentence.
    pub fn auth_change<M: Message>(
        &self,
        out: &mut Output,
        simple: &str,
        header: &Option<ResponseHeader>,
        response: &M,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => {
                let _ = writeln!(out.stdout, "{simple}");
            }
            Format::Json => json::print(&mut out.stdout, header_only(header)),
            Format::Fields => fields::header(&mut out.stdout, header),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn user_get(
        &self,
        out: &mut Output,
        name: &str,
        response: &AuthUserGetResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => {
                let _ = writeln!(out.stdout, "User: {name}");
                let roles: String = response.roles.iter().map(|role| format!(" {role}")).collect();
                let _ = writeln!(out.stdout, "Roles:{roles}");
            }
            Format::Json => {
                let value = Obj::default()
                    .opt("header", json::header(&response.header))
                    .strings("roles", &response.roles)
                    .done();
                json::print(&mut out.stdout, value);
            }
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Fields | Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn user_list(&self, out: &mut Output, response: &AuthUserListResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => {
                for user in &response.users {
                    let _ = writeln!(out.stdout, "{user}");
                }
            }
            Format::Json => {
                let value = Obj::default()
                    .opt("header", json::header(&response.header))
                    .strings("users", &response.users)
                    .done();
                json::print(&mut out.stdout, value);
            }
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Fields | Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn role_get(
        &self,
        out: &mut Output,
        name: &str,
        response: &AuthRoleGetResponse,
    ) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => role_get_simple(&mut out.stdout, name, &response.perm),
            Format::Json => {
                let value = Obj::default()
                    .opt("header", json::header(&response.header))
                    .list("perm", response.perm.iter().map(perm_json).collect())
                    .done();
                json::print(&mut out.stdout, value);
            }
            Format::Fields => role_get_fields(&mut out.stdout, response),
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    pub fn role_list(&self, out: &mut Output, response: &AuthRoleListResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => {
                for role in &response.roles {
                    let _ = writeln!(out.stdout, "{role}");
                }
            }
            Format::Json => {
                let value = Obj::default()
                    .opt("header", json::header(&response.header))
                    .strings("roles", &response.roles)
                    .done();
                json::print(&mut out.stdout, value);
            }
            Format::Fields => {
                fields::header(&mut out.stdout, &response.header);
                let roles: String = response
                    .roles
                    .iter()
                    .map(|role| format!(" {}", quote(role.as_bytes())))
                    .collect();
                let _ = writeln!(out.stdout, "\"Roles\" :{roles}");
            }
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }

    /// As etcdctl 3.5 prints it.
    pub fn auth_status(&self, out: &mut Output, response: &AuthStatusResponse) -> Result<(), CtlError> {
        match self.format {
            Format::Simple => {
                let _ = writeln!(out.stdout, "Authentication Status: {}", response.enabled);
                let _ = writeln!(out.stdout, "AuthRevision: {}", response.auth_revision);
            }
            Format::Json => {
                let value = Obj::default()
                    .opt("header", json::header(&response.header))
                    .boolean("enabled", response.enabled)
                    .int("authRevision", response.auth_revision)
                    .done();
                json::print(&mut out.stdout, value);
            }
            Format::Fields => {
                fields::header(&mut out.stdout, &response.header);
                let _ = writeln!(out.stdout, "\"Enabled\" : {}", response.enabled);
                let _ = writeln!(out.stdout, "\"AuthRevision\" : {}", response.auth_revision);
            }
            Format::Protobuf => out.stdout.extend(response.encode_to_vec()),
            Format::Table => return Err(self.format.unsupported()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_ranges_print_as_etcdctl_prints_them() {
        assert_eq!(perm_range_text(b"single", b"", true), "single");
        assert_eq!(perm_range_text(b"a", b"z", true), "[a, z)");
        assert_eq!(perm_range_text(b"p/", b"p0", true), "[p/, p0) (prefix p/)");
        assert_eq!(perm_range_text(b"p/", b"p0", false), "[p/, p0)");
        assert_eq!(perm_range_text(b"k", b"\0", true), "[k, <open ended>");
    }

    #[test]
    fn role_get_lists_read_then_write() {
        let perm = |kind: PermissionType, key: &[u8], end: &[u8]| Permission {
            perm_type: kind as i32,
            key: key.to_vec(),
            range_end: end.to_vec(),
        };
        let mut out = Vec::new();
        let perms = [
            perm(PermissionType::Readwrite, b"a", b"z"),
            perm(PermissionType::Write, b"k", b"\0"),
            perm(PermissionType::Read, b"single", b""),
        ];
        role_get_simple(&mut out, "r1", &perms);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Role r1\nKV Read:\n\t[a, z)\n\tsingle\nKV Write:\n\t[a, z)\n\t[k, <open ended>\n"
        );
    }
}
