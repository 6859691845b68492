//! MANSCDP XML bodies (GB/T 28181-2016 §A.2): decode, parse Keepalive, Catalog (response and
//! notification), DeviceInfo; build Catalog and DeviceInfo queries.
//!
//! Bytes are decoded as GB18030 whatever the XML declaration says (it is a superset of GB2312 and
//! GBK; a body that is valid UTF-8 with multi-byte text is read as UTF-8 — policy
//! `utf8_body_with_gb2312_declaration`, see [`decode`]). Then
//! quick-xml reads the `str` into a small bounded tree. Unknown elements are ignored. Replies we
//! build are encoded as GB2312 (GBK encoder, as encoding_rs maps that label).
//!
//! Not here: SIP (the body arrives from `proto::sip`), aggregation across MESSAGEs (`signal`).

use quick_xml::events::Event;
use quick_xml::Reader;

/// Bounds on hostile input.
const MAX_DEPTH: usize = 16;
const MAX_NODES: usize = 200_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManscdpError {
    #[error("XML error at byte {offset}: {message}")]
    Xml { offset: u64, message: String },
    #[error("no root element")]
    NoRoot,
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_NODES} elements")]
    TooLarge,
    #[error("missing element {0}")]
    Missing(&'static str),
}

/// A small element tree: name, trimmed text, children.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Decode a body as GB18030 (covers GB2312/GBK). Policy `utf8_body_with_gb2312_declaration`:
/// a body that is entirely valid UTF-8 *and* contains multi-byte sequences is read as UTF-8 —
/// GBK Chinese text is practically never valid UTF-8 over a whole body, while UTF-8 Chinese text
/// decoded as GB18030 becomes mojibake without any decoding error.
pub fn decode(body: &[u8]) -> String {
    if !body.is_ascii() {
        if let Ok(s) = std::str::from_utf8(body) {
            return s.to_owned();
        }
    }
    let (text, _, _) = encoding_rs::GB18030.decode(body);
    text.into_owned()
}

/// Parse XML text into a tree (root element).
pub fn parse_tree(text: &str) -> Result<Node, ManscdpError> {
    let mut r = Reader::from_str(text);
    r.config_mut().trim_text(true);
    r.config_mut().check_end_names = false;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut count = 0usize;
    let err = |r: &Reader<&[u8]>, e: quick_xml::Error| ManscdpError::Xml {
        offset: r.buffer_position(),
        message: e.to_string(),
    };
    loop {
        let ev = r.read_event().map_err(|e| err(&r, e))?;
        let empty = matches!(ev, Event::Empty(_));
        match ev {
            Event::Start(s) | Event::Empty(s) if root.is_none() => {
                count += 1;
                if count > MAX_NODES {
                    return Err(ManscdpError::TooLarge);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(ManscdpError::TooDeep);
                }
                let mut node = Node {
                    name: String::from_utf8_lossy(s.local_name().as_ref()).into_owned(),
                    ..Node::default()
                };
                for a in s.attributes().flatten() {
                    let k = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
                    let v = a.unescape_value().map(|v| v.into_owned()).unwrap_or_default();
                    node.attrs.push((k, v));
                }
                if empty {
                    match stack.last_mut() {
                        Some(p) => p.children.push(node),
                        None => root = Some(node),
                    }
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                if let Some(n) = stack.pop() {
                    match stack.last_mut() {
                        Some(p) => p.children.push(n),
                        None => root = Some(n),
                    }
                }
            }
            Event::Text(t) => {
                if let Some(n) = stack.last_mut() {
                    let s = t
                        .unescape()
                        .map(|c| c.into_owned())
                        .unwrap_or_else(|_| String::from_utf8_lossy(&t).into_owned());
                    n.text.push_str(s.trim());
                }
            }
            Event::CData(t) => {
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(String::from_utf8_lossy(&t).trim());
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    // Policy `unclosed_root`: a body cut short after the last item still yields what arrived.
    while let Some(n) = stack.pop() {
        match stack.last_mut() {
            Some(p) => p.children.push(n),
            None => root = Some(n),
        }
    }
    root.ok_or(ManscdpError::NoRoot)
}

/// One catalog item (§A.2.6.4 / Table A.? "Item" of DeviceList).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogItem {
    pub device_id: String,
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    pub owner: String,
    pub civil_code: String,
    pub address: String,
    pub parental: Option<u8>,
    pub parent_id: String,
    pub status: String,
    pub longitude: Option<f64>,
    pub latitude: Option<f64>,
    /// Notification event: ON, OFF, VLOST, DEFECT, ADD, DEL, UPDATE (§A.2.5 catalog notify).
    pub event: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub sn: u32,
    pub device_id: String,
    pub sum_num: u32,
    /// DeviceList `Num` attribute (items in this message), when given.
    pub list_num: Option<u32>,
    pub items: Vec<CatalogItem>,
}

/// A DeviceInfo response: every child element kept as (name, text), plus the common ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceInfo {
    pub sn: u32,
    pub device_id: String,
    pub result: String,
    pub device_name: String,
    pub manufacturer: String,
    pub model: String,
    pub firmware: String,
    /// `Channel` or, on some vendors, `MaxCamera`.
    pub channels: Option<u32>,
    pub fields: Vec<(String, String)>,
}

/// A decoded MANSCDP body.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Manscdp {
    Keepalive {
        sn: u32,
        device_id: String,
        status: String,
    },
    CatalogResponse(Catalog),
    /// `<Notify><CmdType>Catalog</CmdType>` with events in the items.
    CatalogNotify(Catalog),
    DeviceInfo(DeviceInfo),
    /// A query from the device (e.g. it queries our catalog) or a command we do not handle.
    Other {
        root: String,
        cmd_type: String,
        sn: u32,
        device_id: String,
    },
}

fn num<T: std::str::FromStr>(s: Option<&str>) -> Option<T> {
    s.and_then(|v| v.trim().parse().ok())
}

fn item(n: &Node) -> CatalogItem {
    let t = |k: &str| n.text_of(k).unwrap_or("").to_owned();
    CatalogItem {
        device_id: t("DeviceID"),
        name: t("Name"),
        manufacturer: t("Manufacturer"),
        model: t("Model"),
        owner: t("Owner"),
        civil_code: t("CivilCode"),
        address: t("Address"),
        parental: num(n.text_of("Parental")),
        parent_id: t("ParentID"),
        status: t("Status"),
        longitude: num::<f64>(n.text_of("Longitude")).filter(|v| v.is_finite()),
        latitude: num::<f64>(n.text_of("Latitude")).filter(|v| v.is_finite()),
        event: n.text_of("Event").filter(|e| !e.is_empty()).map(|e| e.to_ascii_uppercase()),
    }
}

/// Decode and parse a MANSCDP body.
pub fn parse(body: &[u8]) -> Result<Manscdp, ManscdpError> {
    let text = decode(body);
    let root = parse_tree(&text)?;
    let cmd = root.text_of("CmdType").ok_or(ManscdpError::Missing("CmdType"))?.to_owned();
    let sn = num(root.text_of("SN")).unwrap_or(0);
    let device_id = root.text_of("DeviceID").unwrap_or("").to_owned();
    let kind = root.name.as_str();
    Ok(match (kind, cmd.as_str()) {
        ("Notify", c) if c.eq_ignore_ascii_case("Keepalive") => {
            Manscdp::Keepalive { sn, device_id, status: root.text_of("Status").unwrap_or("").to_owned() }
        }
        ("Response" | "Notify", c) if c.eq_ignore_ascii_case("Catalog") => {
            let list = root.child("DeviceList");
            let items: Vec<CatalogItem> = list
                .map(|l| {
                    l.children.iter().filter(|c| c.name.eq_ignore_ascii_case("Item")).map(item).collect()
                })
                .unwrap_or_default();
            let cat = Catalog {
                sn,
                device_id,
                sum_num: num(root.text_of("SumNum")).unwrap_or(items.len() as u32),
                list_num: list.and_then(|l| num(l.attr("Num"))),
                items,
            };
            if kind == "Notify" {
                Manscdp::CatalogNotify(cat)
            } else {
                Manscdp::CatalogResponse(cat)
            }
        }
        ("Response", c) if c.eq_ignore_ascii_case("DeviceInfo") => {
            let fields: Vec<(String, String)> = root
                .children
                .iter()
                .filter(|c| c.children.is_empty())
                .map(|c| (c.name.clone(), c.text.clone()))
                .collect();
            let t = |k: &str| root.text_of(k).unwrap_or("").to_owned();
            Manscdp::DeviceInfo(DeviceInfo {
                sn,
                device_id,
                result: t("Result"),
                device_name: t("DeviceName"),
                manufacturer: t("Manufacturer"),
                model: t("Model"),
                firmware: t("Firmware"),
                channels: num(root.text_of("Channel")).or_else(|| num(root.text_of("MaxCamera"))),
                fields,
            })
        }
        _ => Manscdp::Other { root: root.name.clone(), cmd_type: cmd, sn, device_id },
    })
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// Encode text as GB2312 (GBK encoder; §A.1 bodies are GB2312 by convention).
pub fn encode_gb2312(text: &str) -> Vec<u8> {
    encoding_rs::GBK.encode(text).0.into_owned()
}

/// `<Query><CmdType>{cmd}</CmdType>…` for `Catalog` or `DeviceInfo` (§A.2.4), GB2312-encoded.
pub fn build_query(cmd: &str, sn: u32, device_id: &str) -> Vec<u8> {
    encode_gb2312(&format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Query>\r\n<CmdType>{}</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n</Query>\r\n",
        escape(cmd),
        escape(device_id)
    ))
}

/// Build a Catalog response fragment (used by test devices and the simulator): GB2312-encoded.
pub fn build_catalog_response(sn: u32, device_id: &str, sum_num: u32, items: &[CatalogItem]) -> Vec<u8> {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n<SumNum>{sum_num}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n",
        escape(device_id),
        items.len()
    );
    for it in items {
        s.push_str(&format!(
            "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n<Manufacturer>{}</Manufacturer>\r\n<Model>{}</Model>\r\n<Owner>Owner</Owner>\r\n<CivilCode>{}</CivilCode>\r\n<Address>Address</Address>\r\n<Parental>0</Parental>\r\n<ParentID>{}</ParentID>\r\n<SafetyWay>0</SafetyWay>\r\n<RegisterWay>1</RegisterWay>\r\n<Secrecy>0</Secrecy>\r\n<Status>{}</Status>\r\n",
            escape(&it.device_id),
            escape(&it.name),
            escape(&it.manufacturer),
            escape(&it.model),
            escape(&it.civil_code),
            escape(&it.parent_id),
            escape(&it.status)
        ));
        if let (Some(lo), Some(la)) = (it.longitude, it.latitude) {
            s.push_str(&format!("<Longitude>{lo}</Longitude>\r\n<Latitude>{la}</Latitude>\r\n"));
        }
        if let Some(e) = &it.event {
            s.push_str(&format!("<Event>{}</Event>\r\n", escape(e)));
        }
        s.push_str("</Item>\r\n");
    }
    s.push_str("</DeviceList>\r\n</Response>\r\n");
    encode_gb2312(&s)
}

/// Build a Keepalive notify (test devices, simulator).
pub fn build_keepalive(sn: u32, device_id: &str) -> Vec<u8> {
    encode_gb2312(&format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n",
        escape(device_id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog_gb2312() -> Vec<u8> {
        let items: Vec<CatalogItem> = (1..=3)
            .map(|i| CatalogItem {
                device_id: format!("3402000000132000000{i}"),
                name: format!("大门摄像机{i}"),
                manufacturer: "海康威视".into(),
                model: "DS-2CD".into(),
                civil_code: "340200".into(),
                parent_id: "34020000001180000001".into(),
                status: "ON".into(),
                longitude: Some(120.5),
                latitude: Some(30.25),
                ..Default::default()
            })
            .collect();
        build_catalog_response(7, "34020000001180000001", 10, &items)
    }

    #[test]
    fn catalog_in_gb2312_keeps_chinese_names() {
        let body = catalog_gb2312();
        assert!(std::str::from_utf8(&body).is_err(), "really GB2312 bytes");
        match parse(&body).unwrap() {
            Manscdp::CatalogResponse(c) => {
                assert_eq!((c.sn, c.sum_num, c.list_num), (7, 10, Some(3)));
                assert_eq!(c.items.len(), 3);
                assert_eq!(c.items[1].name, "大门摄像机2");
                assert_eq!(c.items[0].manufacturer, "海康威视");
                assert_eq!(c.items[2].latitude, Some(30.25));
                assert_eq!(c.items[2].status, "ON");
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn parse_is_the_same_for_every_truncation_prefix_that_parses() {
        // Hostile prefixes never panic; the full body yields all items.
        let body = catalog_gb2312();
        for cut in 0..body.len() {
            let _ = parse(&body[..cut]);
        }
    }

    #[test]
    fn keepalive_notify_and_unknown_elements() {
        let b = b"<?xml version=\"1.0\" encoding=\"GB2312\"?><Notify><CmdType>Keepalive</CmdType><SN>43</SN><DeviceID>34020000001320000001</DeviceID><Status>OK</Status><Info><Vendor>x</Vendor></Info></Notify>";
        assert_eq!(
            parse(b).unwrap(),
            Manscdp::Keepalive { sn: 43, device_id: "34020000001320000001".into(), status: "OK".into() }
        );
    }

    #[test]
    fn catalog_notify_carries_events() {
        let b = "<?xml version=\"1.0\"?><Notify><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>34020000001180000001</DeviceID><SumNum>2</SumNum><DeviceList Num=\"2\"><Item><DeviceID>34020000001320000009</DeviceID><Event>add</Event><Name>新</Name></Item><Item><DeviceID>34020000001320000001</DeviceID><Event>DEL</Event></Item></DeviceList></Notify>";
        match parse(b.as_bytes()).unwrap() {
            Manscdp::CatalogNotify(c) => {
                assert_eq!(c.items[0].event.as_deref(), Some("ADD"));
                assert_eq!(c.items[0].name, "新");
                assert_eq!(c.items[1].event.as_deref(), Some("DEL"));
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn device_info_keeps_vendor_fields_channel_or_maxcamera() {
        let dahua = encode_gb2312("<?xml version=\"1.0\" encoding=\"GB2312\"?><Response><CmdType>DeviceInfo</CmdType><SN>2</SN><DeviceID>34020000001180000001</DeviceID><Result>OK</Result><DeviceName>录像机</DeviceName><Manufacturer>Dahua</Manufacturer><Model>NVR</Model><Firmware>V4</Firmware><MaxCamera>64</MaxCamera><MaxAlarm>8</MaxAlarm></Response>");
        match parse(&dahua).unwrap() {
            Manscdp::DeviceInfo(d) => {
                assert_eq!(d.channels, Some(64));
                assert_eq!(d.device_name, "录像机");
                assert!(d.fields.iter().any(|(k, v)| k == "MaxAlarm" && v == "8"));
            }
            m => panic!("{m:?}"),
        }
        let hik = b"<Response><CmdType>DeviceInfo</CmdType><SN>2</SN><DeviceID>1</DeviceID><Result>OK</Result><Channel>4</Channel></Response>";
        assert!(matches!(parse(hik).unwrap(), Manscdp::DeviceInfo(DeviceInfo { channels: Some(4), .. })));
    }

    #[test]
    fn utf8_body_with_gb2312_declaration_reads_as_utf8() {
        let b = "<?xml version=\"1.0\" encoding=\"GB2312\"?><Response><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>1</DeviceID><SumNum>1</SumNum><DeviceList Num=\"1\"><Item><DeviceID>2</DeviceID><Name>通道一</Name></Item></DeviceList></Response>";
        match parse(b.as_bytes()).unwrap() {
            Manscdp::CatalogResponse(c) => assert_eq!(c.items[0].name, "通道一"),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn query_is_gb2312_and_round_trips() {
        let q = build_query("Catalog", 9, "34020000001180000001");
        assert!(
            matches!(parse(&q).unwrap(), Manscdp::Other { ref cmd_type, sn: 9, .. } if cmd_type == "Catalog")
        );
        let deep = "<a>".repeat(100);
        assert_eq!(parse(deep.as_bytes()), Err(ManscdpError::TooDeep));
        assert!(parse(b"\xff\xfe\x00").is_err());
    }
}
