//! Writing packets: a sizing pass that checks every length, then a
//! writing pass that cannot fail, so nothing is appended on error.

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{Connect, Packet, Protocol, PubAck, QoS, SubscriptionOptions};
use crate::properties::{with_prefix, Context, Properties};
use crate::wire::{check_str, put_bin, put_varint, varint_len, VARINT_MAX};

/// Sizes computed by the first pass and used by the second.
struct Plan {
    /// First byte: packet type and flags.
    first: u8,
    /// Remaining length.
    body: usize,
    /// Length of the packet's property list (without its prefix).
    props: usize,
    /// Length of the will property list of a CONNECT.
    will_props: usize,
}

/// Appends `packet` encoded for `protocol` to `out`.
///
/// For 3.x the 5.0-only fields (properties, reason codes of acks,
/// UNSUBACK and DISCONNECT, subscription options other than QoS) are left
/// out; SUBACK and CONNACK codes are written as given. A CONNECT is
/// written for its own [`Connect::protocol`], whatever `protocol` says.
/// Only the properties the packet type allows are written. Values are not
/// checked against the protocol's rules: that is the caller's job.
///
/// In 5.0, acks without properties and with reason 0 use the 2-byte short
/// form, DISCONNECT and AUTH without properties and with reason 0 an empty
/// body.
///
/// Fails, appending nothing, when a string or binary field is longer than
/// 65,535 bytes, the packet is longer than the protocol allows, or the
/// packet is AUTH and `protocol` is not 5.0.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    let protocol = match packet {
        Packet::Connect(c) => c.protocol,
        _ => protocol,
    };
    let plan = plan(packet, protocol)?;
    if plan.body > VARINT_MAX as usize {
        return Err(EncodeError::TooLarge);
    }
    out.reserve(1 + varint_len(plan.body) + plan.body);
    out.put_u8(plan.first);
    put_varint(out, plan.body);
    write(packet, protocol, &plan, out);
    Ok(())
}

fn props_len(p: &Properties, v5: bool, ctx: Context) -> Result<usize, EncodeError> {
    if v5 {
        p.encoded_len(ctx)
    } else {
        Ok(0)
    }
}

/// Bytes the optional property list takes in the packet: nothing in 3.x.
fn props_size(v5: bool, len: usize) -> usize {
    if v5 {
        with_prefix(len)
    } else {
        0
    }
}

fn sum(parts: impl IntoIterator<Item = Result<usize, EncodeError>>) -> Result<usize, EncodeError> {
    parts
        .into_iter()
        .try_fold(0usize, |acc, n| Ok(acc.saturating_add(n?)))
}

fn plan(packet: &Packet, protocol: Protocol) -> Result<Plan, EncodeError> {
    let v5 = protocol.is_v5();
    let simple = |first: u8, body: usize| Plan {
        first,
        body,
        props: 0,
        will_props: 0,
    };
    Ok(match packet {
        Packet::Connect(c) => {
            let props = props_len(&c.properties, v5, Context::Connect)?;
            let will_props = match &c.will {
                Some(w) => props_len(&w.properties, v5, Context::Will)?,
                None => 0,
            };
            let will = match &c.will {
                Some(w) => sum([
                    Ok(props_size(v5, will_props)),
                    check_str(w.topic.len()),
                    check_str(w.payload.len()),
                ])?,
                None => 0,
            };
            let body = sum([
                check_str(protocol.name().len()),
                Ok(4 + props_size(v5, props)),
                check_str(c.client_id.len()),
                Ok(will),
                c.username.as_ref().map_or(Ok(0), |u| check_str(u.len())),
                c.password.as_ref().map_or(Ok(0), |p| check_str(p.len())),
            ])?;
            Plan {
                first: 0x10,
                body,
                props,
                will_props,
            }
        }
        Packet::ConnAck(a) => {
            let props = props_len(&a.properties, v5, Context::ConnAck)?;
            Plan {
                first: 0x20,
                body: 2 + props_size(v5, props),
                props,
                will_props: 0,
            }
        }
        Packet::Publish(p) => {
            let props = props_len(&p.properties, v5, Context::Publish)?;
            let id = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
            let body = sum([
                check_str(p.topic.len()),
                Ok(id + props_size(v5, props)),
                Ok(p.payload.len()),
            ])?;
            Plan {
                first: crate::publish::first_byte(p.dup, p.qos, p.retain),
                body,
                props,
                will_props: 0,
            }
        }
        Packet::PubAck(a) => ack_plan(0x40, a, v5)?,
        Packet::PubRec(a) => ack_plan(0x50, a, v5)?,
        Packet::PubRel(a) => ack_plan(0x62, a, v5)?,
        Packet::PubComp(a) => ack_plan(0x70, a, v5)?,
        Packet::Subscribe(s) => {
            let props = props_len(&s.properties, v5, Context::Subscribe)?;
            let filters = sum(s.filters.iter().map(|(f, _)| Ok(check_str(f.len())? + 1)))?;
            Plan {
                first: 0x82,
                body: (2 + props_size(v5, props)).saturating_add(filters),
                props,
                will_props: 0,
            }
        }
        Packet::SubAck(s) => {
            let props = props_len(&s.properties, v5, Context::SubAck)?;
            Plan {
                first: 0x90,
                body: (2 + props_size(v5, props)).saturating_add(s.codes.len()),
                props,
                will_props: 0,
            }
        }
        Packet::Unsubscribe(u) => {
            let props = props_len(&u.properties, v5, Context::Unsubscribe)?;
            let filters = sum(u.filters.iter().map(|f| check_str(f.len())))?;
            Plan {
                first: 0xA2,
                body: (2 + props_size(v5, props)).saturating_add(filters),
                props,
                will_props: 0,
            }
        }
        Packet::UnsubAck(u) => {
            let props = props_len(&u.properties, v5, Context::UnsubAck)?;
            let codes = if v5 { u.codes.len() } else { 0 };
            Plan {
                first: 0xB0,
                body: (2 + props_size(v5, props)).saturating_add(codes),
                props,
                will_props: 0,
            }
        }
        Packet::PingReq => simple(0xC0, 0),
        Packet::PingResp => simple(0xD0, 0),
        Packet::Disconnect(d) => {
            let props = props_len(&d.properties, v5, Context::Disconnect)?;
            let body = match (v5, d.reason, props) {
                (false, _, _) | (true, 0, 0) => 0,
                (true, _, 0) => 1,
                (true, _, _) => 1 + with_prefix(props),
            };
            Plan {
                first: 0xE0,
                body,
                props,
                will_props: 0,
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInProtocol);
            }
            let props = a.properties.encoded_len(Context::Auth)?;
            let body = match (a.reason, props) {
                (0, 0) => 0,
                _ => 1 + with_prefix(props),
            };
            Plan {
                first: 0xF0,
                body,
                props,
                will_props: 0,
            }
        }
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: 5.0 leaves out the reason code when it
/// is 0 and there are no properties, and the property length when there
/// are none.
fn ack_plan(first: u8, a: &PubAck, v5: bool) -> Result<Plan, EncodeError> {
    let props = props_len(&a.properties, v5, Context::Ack)?;
    let body = match (v5, a.reason, props) {
        (false, _, _) | (true, 0, 0) => 2,
        (true, _, 0) => 3,
        (true, _, _) => 3 + with_prefix(props),
    };
    Ok(Plan {
        first,
        body,
        props,
        will_props: 0,
    })
}

fn subscription_options(o: &SubscriptionOptions, v5: bool) -> u8 {
    let qos = o.qos as u8;
    if v5 {
        qos | u8::from(o.no_local) << 2
            | u8::from(o.retain_as_published) << 3
            | (o.retain_handling & 3) << 4
    } else {
        qos
    }
}

fn write_connect(c: &Connect, plan: &Plan, out: &mut BytesMut) {
    let v5 = c.protocol.is_v5();
    put_bin(out, c.protocol.name().as_bytes());
    out.put_u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v5 {
        c.properties.put(Context::Connect, plan.props, out);
    }
    put_bin(out, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            w.properties.put(Context::Will, plan.will_props, out);
        }
        put_bin(out, w.topic.as_bytes());
        put_bin(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_bin(out, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_bin(out, p);
    }
}

fn write_ack(a: &PubAck, v5: bool, plan: &Plan, out: &mut BytesMut) {
    out.put_u16(a.packet_id);
    if plan.body > 2 {
        out.put_u8(a.reason);
    }
    if v5 && plan.props > 0 {
        a.properties.put(Context::Ack, plan.props, out);
    }
}

fn write(packet: &Packet, protocol: Protocol, plan: &Plan, out: &mut BytesMut) {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => write_connect(c, plan, out),
        Packet::ConnAck(a) => {
            let session_present = protocol != Protocol::V31 && a.session_present;
            out.put_u8(u8::from(session_present));
            out.put_u8(a.code);
            if v5 {
                a.properties.put(Context::ConnAck, plan.props, out);
            }
        }
        Packet::Publish(p) => {
            put_bin(out, p.topic.as_bytes());
            if p.qos != QoS::AtMostOnce {
                out.put_u16(p.packet_id);
            }
            if v5 {
                p.properties.put(Context::Publish, plan.props, out);
            }
            out.extend_from_slice(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            write_ack(a, v5, plan, out);
        }
        Packet::Subscribe(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.put(Context::Subscribe, plan.props, out);
            }
            for (filter, options) in &s.filters {
                put_bin(out, filter.as_bytes());
                out.put_u8(subscription_options(options, v5));
            }
        }
        Packet::SubAck(s) => {
            out.put_u16(s.packet_id);
            if v5 {
                s.properties.put(Context::SubAck, plan.props, out);
            }
            out.extend_from_slice(&s.codes);
        }
        Packet::Unsubscribe(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.put(Context::Unsubscribe, plan.props, out);
            }
            for filter in &u.filters {
                put_bin(out, filter.as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u16(u.packet_id);
            if v5 {
                u.properties.put(Context::UnsubAck, plan.props, out);
                out.extend_from_slice(&u.codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if plan.body > 0 {
                out.put_u8(d.reason);
            }
            if plan.body > 1 {
                d.properties.put(Context::Disconnect, plan.props, out);
            }
        }
        Packet::Auth(a) => {
            if plan.body > 0 {
                out.put_u8(a.reason);
                a.properties.put(Context::Auth, plan.props, out);
            }
        }
    }
}
