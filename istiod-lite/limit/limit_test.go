package limit

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestKeyed(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	k := New(rate.Every(time.Second), 3, 10, c.now)
	for i := range 3 {
		if !k.Allow("a") {
			t.Fatalf("event %d of the burst refused", i)
		}
	}
	if k.Allow("a") {
		t.Error("event past the burst allowed")
	}
	if !k.Allow("b") {
		t.Error("another key is limited by the first's use")
	}
	c.t = c.t.Add(time.Second)
	if !k.Allow("a") {
		t.Error("no token after the refill period")
	}
}

func TestKeyedBounded(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	k := New(rate.Every(time.Minute), 2, 100, c.now)
	// Distinct keys, each active: the table never grows past its bound.
	for i := range 1000 {
		k.Allow(fmt.Sprint("peer-", i))
		if k.Len() > 100 {
			t.Fatalf("%d keys remembered, bound 100", k.Len())
		}
	}
	// An exhausted key stays limited while keys that refilled are swept around it.
	k = New(rate.Every(time.Minute), 1, 3, c.now)
	k.Allow("hot")
	k.Allow("x")
	k.Allow("y")
	c.t = c.t.Add(time.Minute / 2)
	k.Allow("z") // full: nothing refilled, one forgotten at random
	if k.Len() > 3 {
		t.Errorf("%d keys, bound 3", k.Len())
	}
	c.t = c.t.Add(time.Minute) // all refilled
	k.Allow("w")
	if k.Len() != 1 {
		t.Errorf("refilled keys not swept: %d left", k.Len())
	}
}
