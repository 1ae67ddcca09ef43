// A Go peer that publishes and subscribes exactly as go-micro's Kafka broker plugin
// (micro/plugins v4 broker/kafka) with go-micro's JSON codec does, on IBM/sarama:
//
//	peer publish <bootstrap> <topic> <name> <age>   one go-micro event, as micro.NewEvent(...).Publish
//	peer subscribe <bootstrap> <topic> <count>      print each message's Header and Body, one JSON line each
//	peer vectors <file>                             check the go-micro test vectors
//	peer json-vectors <file>                        check the JSON data vectors (vectors-json.json)
//	peer msgpack-vectors <file>                     check the msgpack vectors (vectors.json, msgpack.go)
//
// Used by tests/bridge/test_interop_gomicro.py; see docs/interoperability.md.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
)

// Message is go-micro's broker.Message: the JSON codec writes it as
// {"Header": {...}, "Body": "<base64>"} ([]byte is base64 in encoding/json).
type Message struct {
	Header map[string]string
	Body   []byte
}

// Student is the seed's message: what the user service publishes.
type Student struct {
	Name string `json:"name"`
	Age  int    `json:"age"`
}

func uuid4() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func config() *sarama.Config {
	c := sarama.NewConfig()
	c.Producer.Return.Successes = true // the plugin's SyncProducer needs both
	c.Producer.Return.Errors = true
	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest // the plugin: newest; a test must not race
	return c
}

func publish(bootstrap, topic, name string, age int) {
	producer, err := sarama.NewSyncProducer([]string{bootstrap}, config())
	if err != nil {
		fail("producer: %v", err)
	}
	defer producer.Close()
	body, err := json.Marshal(Student{Name: name, Age: age}) // the JSON codec's body
	if err != nil {
		fail("body: %v", err)
	}
	id := uuid4()
	// What rpcClient.Publish hands the broker: its metadata plus these three.
	msg := Message{
		Header: map[string]string{"Content-Type": "application/json", "Micro-Topic": topic, "Micro-Id": id},
		Body:   body,
	}
	value, err := json.Marshal(&msg) // the broker's codec: json.Marshaler{}
	if err != nil {
		fail("marshal: %v", err)
	}
	// As kBroker.Publish: value only, no key, no Kafka headers.
	if _, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(value)}); err != nil {
		fail("send: %v", err)
	}
	fmt.Println(id)
}

type handler struct {
	want int
	seen int
	done context.CancelFunc
}

func (*handler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*handler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim does what the plugin's consumerGroupHandler does before calling a handler.
func (h *handler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for msg := range claim.Messages() {
		var m Message
		out := map[string]any{"offset": msg.Offset}
		if err := json.Unmarshal(msg.Value, &m); err != nil {
			out["error"] = err.Error() // the plugin logs "failed to unmarshal" and skips it
		} else {
			if m.Body == nil {
				m.Body = msg.Value
			}
			if m.Header == nil {
				m.Header = map[string]string{}
			}
			for _, header := range msg.Headers {
				m.Header[string(header.Key)] = string(header.Value)
			}
			m.Header["Micro-Topic"] = msg.Topic
			if _, ok := m.Header["Content-Type"]; !ok {
				m.Header["Content-Type"] = "application/json"
			}
			out["header"] = m.Header
			out["key"] = msg.Key
			var student Student // what a go-micro subscriber's handler gets
			if err := json.Unmarshal(m.Body, &student); err != nil {
				out["error"] = err.Error()
			} else {
				out["student"] = student
			}
			var body any
			_ = json.Unmarshal(m.Body, &body)
			out["body"] = body
		}
		line, _ := json.Marshal(out)
		fmt.Println(string(line))
		sess.MarkMessage(msg, "")
		h.seen++
		if h.seen >= h.want {
			h.done()
			return nil
		}
	}
	return nil
}

func subscribe(bootstrap, topic string, count int) {
	group, err := sarama.NewConsumerGroup([]string{bootstrap}, uuid4(), config()) // Queue: a new uuid
	if err != nil {
		fail("consumer group: %v", err)
	}
	defer group.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h := &handler{want: count, done: cancel}
	for ctx.Err() == nil {
		if err := group.Consume(ctx, []string{topic}, h); err != nil && ctx.Err() == nil {
			fail("consume: %v", err)
		}
	}
	if h.seen < count {
		fail("read %d of %d messages", h.seen, count)
	}
}

type vector struct {
	Name    string `json:"name"`
	Value   string `json:"value"`
	Payload any    `json:"payload"`
	Header  map[string]string
	Exact   bool `json:"exact"` // the value is byte for byte what json.Marshal writes
}

func vectors(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	var file struct {
		Valid   []vector `json:"valid"`
		Invalid []vector `json:"invalid"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		fail("vectors: %v", err)
	}
	for _, v := range file.Valid {
		var m Message
		if err := json.Unmarshal([]byte(v.Value), &m); err != nil {
			fail("%s: %v", v.Name, err)
		}
		var body any
		if err := json.Unmarshal(m.Body, &body); err != nil {
			fail("%s: Body: %v", v.Name, err)
		}
		if !reflect.DeepEqual(body, v.Payload) {
			fail("%s: Body %v, want %v", v.Name, body, v.Payload)
		}
		if v.Exact {
			again, _ := json.Marshal(&m)
			if string(again) != v.Value {
				fail("%s: json.Marshal writes %s, the vector says %s", v.Name, again, v.Value)
			}
		}
		for key, want := range v.Header {
			if m.Header[key] != want {
				fail("%s: Header[%s] = %q, want %q", v.Name, key, m.Header[key], want)
			}
		}
	}
	for _, v := range file.Invalid {
		var m Message
		if json.Unmarshal([]byte(v.Value), &m) == nil {
			var body map[string]any
			if json.Unmarshal(m.Body, &body) == nil && m.Body != nil {
				fail("%s: a go-micro subscriber would accept it", v.Name)
			}
		}
	}
	fmt.Printf("ok %d valid, %d invalid\n", len(file.Valid), len(file.Invalid))
}

// decodeJSON reads one JSON object as docs/wire-format.md#json-data asks of a reader:
// numbers kept exact (json.Number), nesting at most 32 deep, integers of at most 4300
// digits (what Python's json module reads), exactly one value.
func decodeJSON(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var object map[string]any
	if err := dec.Decode(&object); err != nil {
		return nil, err
	}
	if object == nil {
		return nil, fmt.Errorf("not an object")
	}
	if _, err := dec.Token(); err == nil {
		return nil, fmt.Errorf("trailing data")
	}
	if err := bounded(object, 1); err != nil {
		return nil, err
	}
	return object, nil
}

func bounded(value any, depth int) error {
	switch v := value.(type) {
	case map[string]any:
		if depth > 32 {
			return fmt.Errorf("nesting deeper than 32")
		}
		for _, item := range v {
			if err := bounded(item, depth+1); err != nil {
				return err
			}
		}
	case []any:
		if depth > 32 {
			return fmt.Errorf("nesting deeper than 32")
		}
		for _, item := range v {
			if err := bounded(item, depth+1); err != nil {
				return err
			}
		}
	case json.Number:
		if !strings.ContainsAny(string(v), ".eE") && len(strings.TrimLeft(string(v), "-")) > 4300 {
			return fmt.Errorf("an integer of more than 4300 digits")
		}
	}
	return nil
}

// sameJSON compares a decoded value with a vector's payload in the typed JSON form of
// vectors.json: {"$datetime": ...} is an RFC 3339 string (same instant, same offset),
// $date, $uuid and $decimal their text, $bytes (hex) standard base64.
func sameJSON(got, want any) error {
	if typed, ok := want.(map[string]any); ok && len(typed) == 1 {
		for key, text := range typed {
			s, _ := text.(string)
			str, isStr := got.(string)
			switch key {
			case "$datetime":
				w, err1 := time.Parse(time.RFC3339Nano, s)
				g, err2 := time.Parse(time.RFC3339Nano, str)
				_, wo := w.Zone()
				_, gof := g.Zone()
				if !isStr || err1 != nil || err2 != nil || !w.Equal(g) || wo != gof {
					return fmt.Errorf("%v is not the datetime %s", got, s)
				}
				return nil
			case "$date", "$uuid", "$decimal":
				if !isStr || str != s {
					return fmt.Errorf("%v is not %s", got, s)
				}
				return nil
			case "$bytes":
				w, _ := hex.DecodeString(s)
				g, err := base64.StdEncoding.DecodeString(str)
				if !isStr || err != nil || !bytes.Equal(w, g) {
					return fmt.Errorf("%v is not base64 of %s", got, s)
				}
				return nil
			}
		}
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("%v is not the object %v", got, w)
		}
		for key, item := range w {
			if err := sameJSON(g[key], item); err != nil {
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
			if err := sameJSON(g[i], w[i]); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return nil
	}
	if !reflect.DeepEqual(got, want) {
		return fmt.Errorf("%v is not %v", got, want)
	}
	return nil
}

func jsonVectors(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	var file struct {
		Valid []struct {
			Name    string          `json:"name"`
			Value   string          `json:"value"`
			Payload json.RawMessage `json:"payload"`
		} `json:"valid"`
		Invalid []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"invalid"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		fail("vectors: %v", err)
	}
	for _, v := range file.Valid {
		got, err := decodeJSON([]byte(v.Value))
		if err != nil {
			fail("%s: %v", v.Name, err)
		}
		dec := json.NewDecoder(bytes.NewReader(v.Payload))
		dec.UseNumber()
		var want any
		if err := dec.Decode(&want); err != nil {
			fail("%s: payload: %v", v.Name, err)
		}
		if err := sameJSON(got, want); err != nil {
			fail("%s: %v", v.Name, err)
		}
		var compact bytes.Buffer // the value is written without spaces
		if err := json.Compact(&compact, []byte(v.Value)); err != nil || compact.String() != v.Value {
			fail("%s: not compact JSON", v.Name)
		}
	}
	for _, v := range file.Invalid {
		if _, err := decodeJSON([]byte(v.Value)); err == nil {
			fail("%s: a bounded Go reader accepts it", v.Name)
		}
	}
	fmt.Printf("ok %d valid, %d invalid\n", len(file.Valid), len(file.Invalid))
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: peer publish|subscribe|vectors ...")
	}
	switch os.Args[1] {
	case "publish":
		age, _ := strconv.Atoi(os.Args[5])
		publish(os.Args[2], os.Args[3], os.Args[4], age)
	case "subscribe":
		count, _ := strconv.Atoi(os.Args[4])
		subscribe(os.Args[2], os.Args[3], count)
	case "vectors":
		vectors(os.Args[2])
	case "json-vectors":
		jsonVectors(os.Args[2])
	case "msgpack-vectors":
		msgpackVectors(os.Args[2])
	default:
		fail("unknown command %s", os.Args[1])
	}
}
