package upstream

import (
	"fmt"
	"slices"
	"strings"
)

// DefaultRegion is the region used when neither an endpoint nor a region is
// configured.
const DefaultRegion = "cn-north-4"

// Regions lists the regions where CodeArts Build serves its API, as listed by
// the official SDK (services/codeartsbuild/v3/region/region.go).
var Regions = []string{
	"cn-north-4", "cn-north-1", "cn-east-2", "cn-east-3", "cn-south-1",
	"cn-south-2", "cn-southwest-2", "ap-southeast-3", "sa-brazil-1",
	"la-north-2", "la-south-2", "tr-west-1",
}

// RegionEndpoint returns the CodeArts Build API endpoint of a region, such as
// "https://cloudbuild-ext.cn-north-4.myhuaweicloud.com". Regions not in
// [Regions] are refused: use an explicit endpoint for those.
func RegionEndpoint(region string) (string, error) {
	if !slices.Contains(Regions, region) {
		return "", fmt.Errorf("unknown region %q (known: %s; for another region give the endpoint URL instead)",
			region, strings.Join(Regions, ", "))
	}
	return "https://cloudbuild-ext." + region + ".myhuaweicloud.com", nil
}
