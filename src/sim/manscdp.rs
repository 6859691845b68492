//! MANSCDP XML bodies a device sends (GB/T 28181-2016 Annex A: A.2.5 Keepalive notify, A.2.6 Catalog
//! and DeviceInfo responses, A.2.5 catalog event notify (2016 §9.6.2)), written the way Hikvision and
//! Dahua NVRs write them: `<?xml version="1.0" encoding="GB2312"?>`, GB2312 (GBK) bytes. Plus the few
//! query fields a device reads from the server's MESSAGE. Simulator-only; independent of `proto::gb`.

/// One channel as the simulated device reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimChannel {
    pub id: String,
    pub name: String,
    pub online: bool,
    pub longitude: f64,
    pub latitude: f64,
}

/// Device facts that go into every response.
#[derive(Debug, Clone)]
pub struct DeviceFacts<'a> {
    pub device_id: &'a str,
    pub manufacturer: &'a str,
    pub model: &'a str,
    pub firmware: &'a str,
    pub civil_code: &'a str,
}

const DECL: &str = "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n";

/// Encodes text as GB2312 bytes (encoding_rs's GBK, a superset of GB2312; every name we generate is in
/// GB2312). Characters outside GBK become numeric character references, which XML decodes back.
pub fn to_gb2312(s: &str) -> Vec<u8> {
    let (bytes, _, _) = encoding_rs::GBK.encode(s);
    bytes.into_owned()
}

/// Decodes a MANSCDP body as GB18030 (covers GB2312 and GBK), as DESIGN.md §4 says.
pub fn from_gb(bytes: &[u8]) -> String {
    let (s, _, _) = encoding_rs::GB18030.decode(bytes);
    s.into_owned()
}

/// XML text escaping (XML 1.0 §2.4).
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Text of the first `<tag>…</tag>` (no nesting, good enough for the flat query bodies servers send).
pub fn tag_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let a = xml.find(&open)? + open.len();
    let b = xml[a..].find(&close)? + a;
    Some(xml[a..b].trim())
}

/// The root element name (`Query`, `Control`, `Notify`, `Response`), skipping the declaration.
pub fn root_name(xml: &str) -> Option<&str> {
    let mut rest = xml;
    loop {
        let i = rest.find('<')?;
        rest = &rest[i + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            continue;
        }
        let end = rest.find(|c: char| c == '>' || c == ' ' || c == '/' || c.is_whitespace())?;
        return Some(&rest[..end]);
    }
}

pub fn keepalive(sn: u32, device_id: &str) -> Vec<u8> {
    to_gb2312(&format!(
        "{DECL}<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n\
         <Status>OK</Status>\r\n</Notify>\r\n"
    ))
}

fn item_xml(f: &DeviceFacts<'_>, c: &SimChannel, event: Option<&str>) -> String {
    let mut s = String::with_capacity(700);
    s.push_str("<Item>\r\n");
    s.push_str(&format!("<DeviceID>{}</DeviceID>\r\n", esc(&c.id)));
    if let Some(e) = event {
        s.push_str(&format!("<Event>{e}</Event>\r\n"));
        if e == "DEL" {
            s.push_str("</Item>\r\n");
            return s;
        }
    }
    s.push_str(&format!("<Name>{}</Name>\r\n", esc(&c.name)));
    s.push_str(&format!("<Manufacturer>{}</Manufacturer>\r\n", esc(f.manufacturer)));
    s.push_str(&format!("<Model>{}</Model>\r\n", esc(f.model)));
    s.push_str("<Owner>Owner</Owner>\r\n");
    s.push_str(&format!("<CivilCode>{}</CivilCode>\r\n", esc(f.civil_code)));
    s.push_str(&format!("<Address>{}</Address>\r\n", esc("地址")));
    s.push_str("<Parental>0</Parental>\r\n");
    s.push_str(&format!("<ParentID>{}</ParentID>\r\n", esc(f.device_id)));
    s.push_str("<SafetyWay>0</SafetyWay>\r\n<RegisterWay>1</RegisterWay>\r\n<Secrecy>0</Secrecy>\r\n");
    s.push_str(&format!("<Status>{}</Status>\r\n", if c.online { "ON" } else { "OFF" }));
    s.push_str(&format!(
        "<Longitude>{:.6}</Longitude>\r\n<Latitude>{:.6}</Latitude>\r\n",
        c.longitude, c.latitude
    ));
    s.push_str("</Item>\r\n");
    s
}

/// Catalog response bodies (A.2.6.4): SumNum = all channels, split into pages of `page` items, each
/// page one MESSAGE with `<DeviceList Num="k">`. An empty catalog is one body with `Num="0"`.
pub fn catalog_responses(
    sn: &str,
    f: &DeviceFacts<'_>,
    channels: &[SimChannel],
    page: usize,
) -> Vec<Vec<u8>> {
    let page = page.max(1);
    let chunks: Vec<&[SimChannel]> =
        if channels.is_empty() { vec![&[]] } else { channels.chunks(page).collect() };
    chunks
        .into_iter()
        .map(|chunk| {
            let mut s = format!(
                "{DECL}<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{}</SN>\r\n<DeviceID>{}</DeviceID>\r\n\
                 <SumNum>{}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n",
                esc(sn),
                esc(f.device_id),
                channels.len(),
                chunk.len()
            );
            for c in chunk {
                s.push_str(&item_xml(f, c, None));
            }
            s.push_str("</DeviceList>\r\n</Response>\r\n");
            to_gb2312(&s)
        })
        .collect()
}

/// Catalog event notification (GB/T 28181-2016 §9.6.2, A.2.5): one item with `<Event>`.
pub fn catalog_notify(sn: u32, f: &DeviceFacts<'_>, channel: &SimChannel, event: &str) -> Vec<u8> {
    let s = format!(
        "{DECL}<Notify>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n\
         <SumNum>1</SumNum>\r\n<DeviceList Num=\"1\">\r\n{}</DeviceList>\r\n</Notify>\r\n",
        esc(f.device_id),
        item_xml(f, channel, Some(event))
    );
    to_gb2312(&s)
}

/// DeviceInfo response (A.2.6.5). Dahua devices also report `MaxCamera` / `MaxAlarm` (the field
/// servers must keep when `Channel` is absent elsewhere).
pub fn device_info(sn: &str, f: &DeviceFacts<'_>, name: &str, channels: usize) -> Vec<u8> {
    let extra = if f.manufacturer.eq_ignore_ascii_case("dahua") {
        format!("<MaxCamera>{channels}</MaxCamera>\r\n<MaxAlarm>0</MaxAlarm>\r\n")
    } else {
        String::new()
    };
    to_gb2312(&format!(
        "{DECL}<Response>\r\n<CmdType>DeviceInfo</CmdType>\r\n<SN>{}</SN>\r\n<DeviceID>{}</DeviceID>\r\n\
         <Result>OK</Result>\r\n<DeviceName>{}</DeviceName>\r\n<Manufacturer>{}</Manufacturer>\r\n\
         <Model>{}</Model>\r\n<Firmware>{}</Firmware>\r\n<Channel>{channels}</Channel>\r\n{extra}</Response>\r\n",
        esc(sn),
        esc(f.device_id),
        esc(name),
        esc(f.manufacturer),
        esc(f.model),
        esc(f.firmware)
    ))
}

/// DeviceStatus response (A.2.6.6), answered because servers poll it.
pub fn device_status(sn: &str, device_id: &str) -> Vec<u8> {
    to_gb2312(&format!(
        "{DECL}<Response>\r\n<CmdType>DeviceStatus</CmdType>\r\n<SN>{}</SN>\r\n<DeviceID>{}</DeviceID>\r\n\
         <Result>OK</Result>\r\n<Online>ONLINE</Online>\r\n<Status>OK</Status>\r\n<Encode>ON</Encode>\r\n\
         <Record>OFF</Record>\r\n</Response>\r\n",
        esc(sn),
        esc(device_id)
    ))
}

const PLACES: [&str; 12] = [
    "前门",
    "后门",
    "大厅",
    "停车场",
    "仓库",
    "走廊",
    "电梯厅",
    "楼梯口",
    "办公室",
    "机房",
    "周界",
    "收银台",
];

/// The channel name the simulator gives channel number `n` (1-based).
pub fn channel_name(n: u32, chinese: bool) -> String {
    if chinese {
        format!("通道{:02} {}", n, PLACES[((n.max(1) - 1) as usize) % PLACES.len()])
    } else {
        format!("Camera {n:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DeviceFacts<'static> {
        DeviceFacts {
            device_id: "34020000001180000001",
            manufacturer: "Hikvision",
            model: "DS-7816N",
            firmware: "V4.0",
            civil_code: "340200",
        }
    }

    #[test]
    fn catalog_is_split_into_pages_with_sumnum_and_gb2312_names() {
        let chans: Vec<SimChannel> = (1..=20)
            .map(|i| SimChannel {
                id: format!("340200000013200000{i:02}"),
                name: channel_name(i, true),
                online: true,
                longitude: 120.0,
                latitude: 30.0,
            })
            .collect();
        let bodies = catalog_responses("17", &facts(), &chans, 8);
        assert_eq!(bodies.len(), 3);
        let mut names = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            assert!(std::str::from_utf8(b).is_err(), "GB2312 bytes, not UTF-8");
            let s = from_gb(b);
            assert_eq!(tag_text(&s, "SumNum"), Some("20"));
            assert!(s.contains(&format!("<DeviceList Num=\"{}\">", [8, 8, 4][i])));
            let mut rest = s.as_str();
            while let Some(n) = tag_text(rest, "Name") {
                names.push(n.to_string());
                rest = &rest[rest.find("</Name>").unwrap() + 7..];
            }
        }
        assert_eq!(names.len(), 20);
        assert_eq!(names[0], "通道01 前门");
    }

    #[test]
    fn device_info_has_result_and_channel_and_dahua_adds_max_camera() {
        let hik = from_gb(&device_info("3", &facts(), "NVR", 16));
        assert_eq!(tag_text(&hik, "Result"), Some("OK"));
        assert_eq!(tag_text(&hik, "Channel"), Some("16"));
        assert_eq!(tag_text(&hik, "MaxCamera"), None);
        let dahua = DeviceFacts { manufacturer: "Dahua", ..facts() };
        let d = from_gb(&device_info("3", &dahua, "NVR", 16));
        assert_eq!(tag_text(&d, "MaxCamera"), Some("16"));
    }

    #[test]
    fn query_fields_are_read_from_flat_xml() {
        let q = "<?xml version=\"1.0\"?>\n<Query>\n<CmdType>Catalog</CmdType>\n<SN>5</SN>\n</Query>";
        assert_eq!(root_name(q), Some("Query"));
        assert_eq!(tag_text(q, "CmdType"), Some("Catalog"));
        assert_eq!(tag_text(q, "SN"), Some("5"));
    }
}
