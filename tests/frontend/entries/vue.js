import {createApp} from "vue";
import ImageGenerator from "../build/recipes/ImageGenerator.vue";

createApp(ImageGenerator).mount("#root");
