package main

// A bounded reader of the bridge's msgpack payloads, written from docs/wire-format.md
// alone (no msgpack library), and the check of tests/bridge/vectors.json with it.

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const maxDepth = 32

var errTruncated = errors.New("truncated")

// Decimal is ext 4's text; Date ext 2's "YYYY-MM-DD"; UUID ext 3's canonical text.
type (
	Decimal string
	Date    string
	UUID    string
)

type mpReader struct {
	b []byte
	i int
}

func (r *mpReader) take(n uint64) ([]byte, error) {
	if n > uint64(len(r.b)-r.i) { // a declared length is capped by the bytes left
		return nil, errTruncated
	}
	s := r.b[r.i : r.i+int(n)]
	r.i += int(n)
	return s, nil
}

func (r *mpReader) uint(n uint64) (uint64, error) {
	s, err := r.take(n)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range s {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// decodeMsgpack reads one payload: exactly one map with str keys, within the limits.
func decodeMsgpack(data []byte) (map[string]any, error) {
	if len(data) == 0 {
		return nil, errors.New("empty value")
	}
	r := &mpReader{b: data}
	v, err := r.value(1)
	if err != nil {
		return nil, err
	}
	if r.i != len(data) {
		return nil, errors.New("trailing bytes")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("top level is not a map")
	}
	return m, nil
}

func (r *mpReader) value(depth int) (any, error) {
	head, err := r.uint(1)
	if err != nil {
		return nil, err
	}
	c := byte(head)
	switch {
	case c <= 0x7f:
		return json.Number(strconv.Itoa(int(c))), nil
	case c >= 0xe0:
		return json.Number(strconv.Itoa(int(int8(c)))), nil
	case c >= 0x80 && c <= 0x8f:
		return r.mapOf(uint64(c&0x0f), depth)
	case c >= 0x90 && c <= 0x9f:
		return r.arrayOf(uint64(c&0x0f), depth)
	case c >= 0xa0 && c <= 0xbf:
		return r.str(uint64(c & 0x1f))
	}
	sizes := map[byte]uint64{0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4, 0xdc: 2, 0xdd: 4, 0xde: 2, 0xdf: 4, 0xc7: 1, 0xc8: 2, 0xc9: 4}
	switch c {
	case 0xc0:
		return nil, nil
	case 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	case 0xc4, 0xc5, 0xc6:
		n, err := r.uint(sizes[c])
		if err != nil {
			return nil, err
		}
		return r.take(n)
	case 0xd9, 0xda, 0xdb:
		n, err := r.uint(sizes[c])
		if err != nil {
			return nil, err
		}
		return r.str(n)
	case 0xdc, 0xdd:
		n, err := r.uint(sizes[c])
		if err != nil {
			return nil, err
		}
		return r.arrayOf(n, depth)
	case 0xde, 0xdf:
		n, err := r.uint(sizes[c])
		if err != nil {
			return nil, err
		}
		return r.mapOf(n, depth)
	case 0xca, 0xcb:
		n := uint64(4)
		if c == 0xcb {
			n = 8
		}
		bits, err := r.uint(n)
		if err != nil {
			return nil, err
		}
		if c == 0xca {
			return float64(math.Float32frombits(uint32(bits))), nil
		}
		return math.Float64frombits(bits), nil
	case 0xcc, 0xcd, 0xce, 0xcf:
		v, err := r.uint(1 << (c - 0xcc))
		return json.Number(strconv.FormatUint(v, 10)), err
	case 0xd0, 0xd1, 0xd2, 0xd3:
		n := uint64(1) << (c - 0xd0)
		v, err := r.uint(n)
		shift := 64 - 8*n
		return json.Number(strconv.FormatInt(int64(v<<shift)>>shift, 10)), err
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
		return r.ext(uint64(1) << (c - 0xd4))
	case 0xc7, 0xc8, 0xc9:
		n, err := r.uint(sizes[c])
		if err != nil {
			return nil, err
		}
		return r.ext(n)
	}
	return nil, fmt.Errorf("never-used byte 0x%02x", c)
}

func (r *mpReader) str(n uint64) (string, error) {
	s, err := r.take(n)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(s) {
		return "", errors.New("invalid UTF-8 in a str")
	}
	return string(s), nil
}

func (r *mpReader) arrayOf(n uint64, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("too deep")
	}
	if n > uint64(len(r.b)-r.i) { // every item takes a byte at least
		return nil, errTruncated
	}
	items := make([]any, 0, n)
	for k := uint64(0); k < n; k++ {
		v, err := r.value(depth + 1)
		if err != nil {
			return nil, err
		}
		items = append(items, v)
	}
	return items, nil
}

func (r *mpReader) mapOf(n uint64, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("too deep")
	}
	if n > uint64(len(r.b)-r.i)/2 {
		return nil, errTruncated
	}
	m := make(map[string]any, n)
	for k := uint64(0); k < n; k++ {
		key, err := r.value(depth + 1)
		if err != nil {
			return nil, err
		}
		name, ok := key.(string)
		if !ok {
			return nil, errors.New("a map key that is not a str")
		}
		if m[name], err = r.value(depth + 1); err != nil {
			return nil, err
		}
	}
	return m, nil
}

var decimalText = regexp.MustCompile(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$`)

func (r *mpReader) ext(n uint64) (any, error) {
	code, err := r.uint(1)
	if err != nil {
		return nil, err
	}
	d, err := r.take(n)
	if err != nil {
		return nil, err
	}
	switch int8(code) {
	case -1:
		var sec int64
		var nsec uint32
		switch len(d) {
		case 4:
			sec = int64(binary.BigEndian.Uint32(d))
		case 8:
			v := binary.BigEndian.Uint64(d)
			nsec, sec = uint32(v>>34), int64(v&(1<<34-1))
		case 12:
			nsec, sec = binary.BigEndian.Uint32(d), int64(binary.BigEndian.Uint64(d[4:]))
		default:
			return nil, errors.New("timestamp of bad length")
		}
		return instant(sec, nsec, 0)
	case 1:
		if len(d) != 16 {
			return nil, errors.New("datetime of bad length")
		}
		offset := int32(binary.BigEndian.Uint32(d[12:]))
		if offset < -86399 || offset > 86399 {
			return nil, errors.New("datetime offset out of range")
		}
		return instant(int64(binary.BigEndian.Uint64(d[4:])), binary.BigEndian.Uint32(d), int(offset))
	case 2:
		if len(d) != 4 {
			return nil, errors.New("date of bad length")
		}
		y, m, day := int(binary.BigEndian.Uint16(d)), int(d[2]), int(d[3])
		t := time.Date(y, time.Month(m), day, 0, 0, 0, 0, time.UTC)
		if y < 1 || y > 9999 || t.Month() != time.Month(m) || t.Day() != day {
			return nil, errors.New("invalid date")
		}
		return Date(t.Format("2006-01-02")), nil
	case 3:
		if len(d) != 16 {
			return nil, errors.New("uuid of bad length")
		}
		h := hex.EncodeToString(d)
		return UUID(h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]), nil
	case 4:
		if !decimalText.Match(d) {
			return nil, fmt.Errorf("decimal %q", d)
		}
		return Decimal(d), nil
	}
	return nil, fmt.Errorf("unknown extension type %d", int8(code))
}

func instant(sec int64, nsec uint32, offset int) (any, error) {
	if nsec > 999_999_999 {
		return nil, errors.New("nanoseconds out of range")
	}
	t := time.Unix(sec, int64(nsec/1000*1000)).In(time.FixedZone("", offset)) // microseconds
	if t.Year() < 1 || t.Year() > 9999 {
		return nil, errors.New("datetime out of range")
	}
	return t, nil
}

var isoOffset = regexp.MustCompile(`^(.*)([+-])(\d\d):(\d\d)(?::(\d\d))?$`)

// parseISO reads Python's isoformat(), whose UTC offset may have seconds (+00:19:32).
func parseISO(s string) (time.Time, error) {
	m := isoOffset.FindStringSubmatch(s)
	if m == nil {
		return time.Time{}, fmt.Errorf("no UTC offset in %q", s)
	}
	h, _ := strconv.Atoi(m[3])
	mi, _ := strconv.Atoi(m[4])
	sec := 0
	if m[5] != "" {
		sec, _ = strconv.Atoi(m[5])
	}
	offset := h*3600 + mi*60 + sec
	if m[2] == "-" {
		offset = -offset
	}
	return time.ParseInLocation("2006-01-02T15:04:05.999999999", m[1], time.FixedZone("", offset))
}

// decimalTuple is Python's Decimal.as_tuple(): sign, digits (no leading zeros), exponent.
func decimalTuple(text string) string {
	sign := ""
	if strings.HasPrefix(text, "-") {
		sign = "-"
	}
	text = strings.TrimLeft(text, "+-")
	exp := 0
	if i := strings.IndexAny(text, "eE"); i >= 0 {
		exp, _ = strconv.Atoi(text[i+1:])
		text = text[:i]
	}
	whole, frac, _ := strings.Cut(text, ".")
	digits := strings.TrimLeft(whole+frac, "0")
	if digits == "" {
		digits = "0"
	}
	return fmt.Sprintf("%s%s:%d", sign, digits, exp-len(frac))
}

// sameMsgpack compares a decoded value with a vector's payload in typed JSON.
func sameMsgpack(got, want any) error {
	if typed, ok := want.(map[string]any); ok && len(typed) == 1 {
		for key, text := range typed {
			s, _ := text.(string)
			switch key {
			case "$datetime":
				w, err := parseISO(s)
				g, ok := got.(time.Time)
				_, wo := w.Zone()
				if err != nil || !ok {
					return fmt.Errorf("%v is not the datetime %s", got, s)
				}
				if _, gof := g.Zone(); !w.Equal(g) || wo != gof {
					return fmt.Errorf("%v is not the datetime %s", got, s)
				}
				return nil
			case "$date":
				if got != Date(s) {
					return fmt.Errorf("%v is not the date %s", got, s)
				}
				return nil
			case "$uuid":
				if got != UUID(s) {
					return fmt.Errorf("%v is not the uuid %s", got, s)
				}
				return nil
			case "$decimal":
				g, ok := got.(Decimal)
				if !ok || decimalTuple(string(g)) != decimalTuple(s) {
					return fmt.Errorf("%v is not the decimal %s", got, s)
				}
				return nil
			case "$bytes":
				w, _ := hex.DecodeString(s)
				g, ok := got.([]byte)
				if !ok || hex.EncodeToString(g) != hex.EncodeToString(w) {
					return fmt.Errorf("%v is not the bytes %s", got, s)
				}
				return nil
			}
		}
	}
	switch w := want.(type) {
	case json.Number:
		if strings.ContainsAny(string(w), ".eE") {
			f, _ := w.Float64()
			if g, ok := got.(float64); !ok || g != f {
				return fmt.Errorf("%v is not the float %s", got, w)
			}
			return nil
		}
		if got != w {
			return fmt.Errorf("%v is not the int %s", got, w)
		}
		return nil
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("%v is not the map %v", got, w)
		}
		for key, item := range w {
			if err := sameMsgpack(g[key], item); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
		}
		return nil
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("%v is not the array %v", got, w)
		}
		for i := range w {
			if err := sameMsgpack(g[i], w[i]); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return nil
	}
	if got != want {
		return fmt.Errorf("%v is not %v", got, want)
	}
	return nil
}

func msgpackVectors(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	var file struct {
		Valid []struct {
			Name    string          `json:"name"`
			Hex     string          `json:"value_hex"`
			Payload json.RawMessage `json:"payload"`
		} `json:"valid"`
		Invalid []struct {
			Name string `json:"name"`
			Hex  string `json:"value_hex"`
		} `json:"invalid"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		fail("vectors: %v", err)
	}
	for _, v := range file.Valid {
		value, _ := hex.DecodeString(v.Hex)
		got, err := decodeMsgpack(value)
		if err != nil {
			fail("%s: %v", v.Name, err)
		}
		want, err := decodeJSON(v.Payload)
		if err != nil {
			fail("%s: payload: %v", v.Name, err)
		}
		if err := sameMsgpack(got, want); err != nil {
			fail("%s: %v", v.Name, err)
		}
	}
	for _, v := range file.Invalid {
		value, _ := hex.DecodeString(v.Hex)
		if _, err := decodeMsgpack(value); err == nil {
			fail("%s: accepted", v.Name)
		}
	}
	fmt.Printf("ok %d valid, %d invalid\n", len(file.Valid), len(file.Invalid))
}
