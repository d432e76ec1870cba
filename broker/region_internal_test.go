package broker

import (
	"regexp"
	"testing"
)

// FuzzValidRegion holds validRegion to the regexp it replaces.
func FuzzValidRegion(f *testing.F) {
	re := regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-\d{1,2}$`)
	for _, s := range []string{"us-east-1", "us-gov-west-1", "ap-southeast-12", "eu-central-123", "us-1", "us-east-",
		"us-east-1a", "useast-1", "us-East-1", "u-east-1", "us--east-1", "us-east1-1", "us-east-1-1", "", "us", "us-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidRegion(s), re.MatchString(s); got != want {
			t.Errorf("ValidRegion(%q) = %v, the regexp says %v", s, got, want)
		}
	})
}
